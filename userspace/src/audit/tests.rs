//! Tests with real files in temp dirs and, for the crash, a real child process killed with
//! SIGKILL.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::writer::list_segments;
use super::*;
use crate::config::audit::{AuditConfig, FsyncPolicy, OnFull, RetentionConfig};
use crate::model::{Class, Command, Decision, Dialect, Facts, Identity, Protocol, Workload};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A temp directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "airlock-audit-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn log(&self) -> PathBuf {
        self.0.join("log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(t: &TempDir) -> AuditConfig {
    AuditConfig {
        dir: Some(t.log()),
        signing_key: Some(t.path().join("audit.key")),
        min_free_bytes: 0,
        // These tests were written for per-group fsync (rotation right after each group);
        // the default is batch (docs/decisions/audit-durability.md).
        fsync: FsyncPolicy::Always,
        ..AuditConfig::default()
    }
}

fn open(cfg: &AuditConfig, t: &TempDir) -> Recorder {
    Recorder::open(cfg, t.path()).unwrap()
}

fn public(t: &TempDir) -> ed25519_dalek::VerifyingKey {
    load_public_key(&public_key_path(&t.path().join("audit.key"))).unwrap()
}

fn identity(subject: &str) -> Identity {
    Identity {
        subject: subject.into(),
        groups: vec!["agents".into()],
        workload: Some(Workload {
            pid: 4242,
            tgid: 4242,
            uid: 1000,
            gid: 1000,
            cgroup_id: 77,
            cgroup_path: Some("/agents/ci".into()),
            user: Some(subject.into()),
            comm: "psql".into(),
            netns_cookie: 1,
            original_dst: Some("198.18.0.2:5432".parse().unwrap()),
            peer: Some("127.0.0.1:40001".parse().unwrap()),
        }),
        token: None,
    }
}

fn allow() -> Decision {
    Decision::Allow {
        rule: "agents-read".into(),
        mask: vec!["email".into()],
        run_as: None,
    }
}

/// Records one session of `cmds` commands, each with a result.
async fn session(rec: &Recorder, subject: &str, target: &str, cmds: usize) -> String {
    let id = identity(subject);
    let mut s = rec.admit_session().unwrap();
    s.start(SessionStart {
        proxy_session: Some(1),
        identity: &id,
        workload: None,
        target,
        protocol: Protocol::Postgres,
        client: None,
        original_dst: None,
        tls: None,
    })
    .await
    .unwrap();
    let decision = allow();
    for i in 0..cmds {
        let text = format!("SELECT {i} FROM orders /* {subject} */");
        let (n, ack) = s.command(read_event(&sql(&text), &decision)).await.unwrap();
        ack.durable().await.unwrap();
        s.result(
            n,
            CommandResult {
                rows: Some(1),
                bytes: 42,
                duration: Duration::from_micros(300),
                error: None,
                ..CommandResult::default()
            },
        )
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    }
    let id = s.id().to_owned();
    s.end(SessionEnd {
        reason: EndReason::ClientClosed,
        detail: None,
        bytes_from_client: 100,
        bytes_to_client: 200,
    })
    .await
    .unwrap();
    id
}

/// What classification finds in a read of `orders`.
static READ: std::sync::LazyLock<Facts> = std::sync::LazyLock::new(|| Facts {
    tables_read: vec!["orders".into()],
    ..Facts::single("select", Class::Read)
});

/// A PostgreSQL statement.
fn sql(text: &str) -> Command<'_> {
    Command::sql(Dialect::Postgres, text)
}

/// An allowed read, as the gateway records one.
fn read_event<'a>(command: &'a Command<'a>, decision: &'a Decision) -> CommandEvent<'a> {
    CommandEvent {
        command,
        facts: &READ,
        decision,
        approval: None,
        caller: None,
    }
}

/// A review approved by one vote of `by`.
fn approved_review(id: &str, by: &str, reason: &str) -> ReviewRecord {
    ReviewRecord {
        id: id.into(),
        outcome: ApprovalOutcome::Approved,
        rule: "writes-need-dba".into(),
        groups: vec!["dba".into()],
        quorum: 1,
        mode: Some("hold".into()),
        escalated_to: Vec::new(),
        requested_at: 1_000_000,
        decided_at: Some(2_000_000),
        votes: vec![VoteRecord {
            by: by.into(),
            via: "oidc:https://idp.example".into(),
            verdict: "approve".into(),
            reason: Some(reason.into()),
            at: 2_000_000,
        }],
        grant: None,
        reason: Some(reason.into()),
        decided_by: Vec::new(),
    }
}

/// A closed log with two sessions of five commands: 1 open + 2 × (start + 10 + end) records.
async fn sample_log(t: &TempDir) {
    let rec = open(&config(t), t);
    session(&rec, "alice", "demo-db", 5).await;
    session(&rec, "bob", "demo-db", 5).await;
    rec.close().await.unwrap();
}

fn segments(t: &TempDir) -> Vec<PathBuf> {
    list_segments(&t.log())
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// How many lines of the log's segments contain `needle`.
fn lines_with(t: &TempDir, needle: &str) -> usize {
    segments(t)
        .iter()
        .flat_map(|seg| read_lines(seg))
        .filter(|l| l.contains(needle))
        .count()
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(p, s).unwrap();
}

fn has(report: &Report, kind: IssueKind) -> bool {
    report.issues.iter().any(|i| i.kind == kind)
}

fn check(t: &TempDir) -> Report {
    verify(&t.log(), &public(t)).unwrap()
}

#[tokio::test]
async fn records_verify_and_read_back() {
    let t = TempDir::new("roundtrip");
    let rec = open(&config(&t), &t);
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(SessionStart {
        proxy_session: Some(7),
        identity: &id,
        workload: None,
        target: "demo-db",
        protocol: Protocol::Postgres,
        client: None,
        original_dst: None,
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            server_name: None,
            client_subject: None,
        }),
    })
    .await
    .unwrap();
    let review = Decision::Review {
        rule: "writes-need-dba".into(),
        approvers: vec!["dba".into()],
        quorum: 1,
        ttl: Duration::from_secs(60),
        timeout: Duration::from_secs(30),
        on_timeout: crate::model::OnTimeout::Deny,
        escalate_to: Vec::new(),
        mode: crate::model::ReviewMode::Hold,
        mask: Vec::new(),
        run_as: None,
        approved_run_as: None,
        dry_run: false,
    };
    let update = Facts {
        tables_written: vec!["orders".into()],
        ..Facts::single("update", Class::Write)
    };
    let (n, ack) = s
        .command(CommandEvent {
            command: &sql("UPDATE orders SET paid = true"),
            facts: &update,
            decision: &review,
            approval: Some(approved_review("req-1", "carol", "looks fine")),
            caller: None,
        })
        .await
        .unwrap();
    ack.durable().await.unwrap();
    s.result(
        n,
        CommandResult {
            rows: Some(3),
            bytes: 15,
            duration: Duration::from_millis(2),
            error: None,
            ..CommandResult::default()
        },
    )
    .await
    .unwrap()
    .durable()
    .await
    .unwrap();
    let deny = Decision::Deny {
        rule: "no-ddl".into(),
        reason: "ddl is denied".into(),
    };
    let (n2, ack) = s
        .command(CommandEvent {
            command: &sql("DROP TABLE orders"),
            facts: &Facts {
                tables_written: vec!["orders".into()],
                ..Facts::single("drop", Class::Ddl)
            },
            decision: &deny,
            approval: None,
            caller: None,
        })
        .await
        .unwrap();
    ack.durable().await.unwrap();
    assert_eq!(n2, 2);
    let sid = s.id().to_owned();
    s.end(SessionEnd {
        reason: EndReason::ClientClosed,
        detail: None,
        bytes_from_client: 10,
        bytes_to_client: 20,
    })
    .await
    .unwrap();
    rec.close().await.unwrap();
    // Closed: no more sessions, appends fail.
    assert!(matches!(rec.admit_session(), Err(AuditError::Closed)));

    let report = check(&t);
    assert!(report.ok, "{:#?}", report.issues);
    assert!(report.issues.is_empty(), "{:#?}", report.issues);
    assert_eq!(report.records, 7); // open, start, command, approval, result, command, end
    assert_eq!(report.sessions, 1);
    assert_eq!(report.open_sessions, 0);
    assert_eq!(report.signed_seq, Some(6));
    assert_eq!(report.unsigned_tail, 0);

    let records = read_records(&t.log()).unwrap();
    let Event::SessionStart(start) = &records[1].event else {
        panic!("{:?}", records[1])
    };
    assert_eq!(start.subject, "alice");
    assert_eq!(start.client, Some("127.0.0.1:40001".parse().unwrap()));
    assert_eq!(start.original_dst, Some("198.18.0.2:5432".parse().unwrap()));
    assert_eq!(start.workload.as_ref().unwrap().comm, "psql");
    assert_eq!(start.tls.as_ref().unwrap().version, "TLSv1.3");
    let Event::Command(c) = &records[2].event else {
        panic!()
    };
    assert_eq!(
        (c.action.as_ref(), c.rule.as_str()),
        ("review", "writes-need-dba")
    );
    let Event::Command(c) = &records[5].event else {
        panic!()
    };
    assert_eq!(c.reason.as_deref(), Some("ddl is denied"));
    let Event::SessionEnd(e) = &records[6].event else {
        panic!()
    };
    assert_eq!((e.records, e.commands), (5, 2));

    let found = search_sessions(
        &t.log(),
        &SessionQuery {
            text: Some("drop table".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].id.as_str(), found[0].denied, found[0].reviewed),
        (sid.as_str(), 1, 1)
    );
    let none = search_sessions(
        &t.log(),
        &SessionQuery {
            identity: Some("bob".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(none.is_empty());
    let by_group = search_sessions(
        &t.log(),
        &SessionQuery {
            identity: Some("agents".into()),
            target: Some("demo-db".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_group.len(), 1);

    let now = super::time::now_us();
    let window = |since: Option<u64>, until: Option<u64>| {
        search_sessions(
            &t.log(),
            &SessionQuery {
                since,
                until,
                ..Default::default()
            },
        )
        .unwrap()
        .len()
    };
    assert_eq!(window(Some(now - 60_000_000), Some(now + 1)), 1);
    assert_eq!(
        window(Some(now + 60_000_000), None),
        0,
        "ended before --since"
    );
    assert_eq!(
        window(None, Some(now - 60_000_000)),
        0,
        "started after --until"
    );

    let (id, recs) = load_session(&t.log(), &sid[..10]).unwrap();
    assert_eq!(id, sid);
    let mut out = Vec::new();
    cli::render_transcript(&recs, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("#1 > UPDATE orders SET paid = true"),
        "{text}"
    );
    assert!(
        text.contains("#1 approval req-1 approved (rule writes-need-dba; approvers dba;"),
        "{text}"
    );
    assert!(
        text.contains("approve by carol (oidc:https://idp.example) at ")
            && text.contains(": looks fine"),
        "{text}"
    );
    assert!(text.contains("sql; write; update; writes orders"), "{text}");
    assert!(text.contains("#2 > DROP TABLE orders"), "{text}");
    assert!(text.contains("[+"), "{text}");
}

#[tokio::test]
async fn edited_byte_is_detected_and_located() {
    let t = TempDir::new("edit");
    sample_log(&t).await;
    let seg = &segments(&t)[0];
    let mut lines = read_lines(seg);
    // Line 5 (1-based) is a command of alice's session: change one byte of its text.
    assert!(lines[4].contains("SELECT 1 FROM"), "{}", lines[4]);
    lines[4] = lines[4].replacen("SELECT 1 FROM", "SELECT 9 FROM", 1);
    write_lines(seg, &lines);
    let r = check(&t);
    assert!(!r.ok);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Modified)
        .expect("modified");
    assert_eq!(issue.line, Some(5), "{issue}");
    assert_eq!(issue.seq, Some(4), "{issue}");
    assert_eq!(
        issue.file.as_deref(),
        seg.file_name().and_then(|n| n.to_str())
    );
    // The session chain breaks at the same place.
    assert!(has(&r, IssueKind::SessionChain), "{:#?}", r.issues);

    // An edit that breaks the JSON is named as such, at its line.
    lines[8] = lines[8].replacen('{', "[", 1);
    write_lines(seg, &lines);
    let r = check(&t);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Unparseable)
        .expect("unparseable");
    assert_eq!((issue.line, issue.seq), (Some(9), Some(8)), "{issue}");
}

#[tokio::test]
async fn deleted_record_is_detected() {
    let t = TempDir::new("delete");
    sample_log(&t).await;
    let seg = &segments(&t)[0];
    let mut lines = read_lines(seg);
    lines.remove(6);
    write_lines(seg, &lines);
    let r = check(&t);
    assert!(!r.ok);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Deleted)
        .expect("deleted");
    assert_eq!((issue.line, issue.seq), (Some(7), Some(7)), "{issue}");
    assert!(issue.message.contains("records 6..6"), "{issue}");
    assert!(issue.session.is_some(), "{issue}");
}

#[tokio::test]
async fn reordered_records_are_detected() {
    let t = TempDir::new("reorder");
    sample_log(&t).await;
    let seg = &segments(&t)[0];
    let mut lines = read_lines(seg);
    lines.swap(3, 4);
    write_lines(seg, &lines);
    let r = check(&t);
    assert!(!r.ok);
    assert!(has(&r, IssueKind::Reordered), "{:#?}", r.issues);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Reordered)
        .unwrap();
    assert_eq!(issue.line, Some(5), "{issue}");
}

#[tokio::test]
async fn truncation_is_detected() {
    let t = TempDir::new("truncate");
    sample_log(&t).await;
    let seg = &segments(&t)[0];
    let mut lines = read_lines(seg);
    lines.truncate(lines.len() - 3);
    write_lines(seg, &lines);
    let r = check(&t);
    assert!(!r.ok);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Truncated)
        .expect("truncated");
    assert!(issue.message.contains("records 22..24"), "{issue}");
}

/// Rewrites every record (changing one command) with recomputed hashes, as an attacker
/// without the key would; returns the new final line hash.
fn rewrite_chain(seg: &Path) -> ChainHash {
    let mut prev = ChainHash::ZERO;
    let mut sess: std::collections::HashMap<String, ChainHash> = Default::default();
    let mut out = Vec::new();
    for line in read_lines(seg) {
        let mut rec: Record = serde_json::from_str(&line).unwrap();
        if let Event::Command(c) = &mut rec.event
            && let Command::Sql { text, .. } = &mut c.command
        {
            *text = text
                .replace(
                    "SELECT 2 FROM orders /* bob",
                    "SELECT 2 FROM salaries /* bob",
                )
                .into();
        }
        rec.prev = prev;
        if let Some(s) = &rec.session {
            rec.sprev = Some(if matches!(rec.event, Event::SessionStart(_)) {
                ChainHash::ZERO
            } else {
                sess[s]
            });
        }
        let text = serde_json::to_string(&rec).unwrap();
        prev = ChainHash::of_line(text.as_bytes());
        if let Some(s) = &rec.session {
            sess.insert(s.clone(), prev);
        }
        out.push(text);
    }
    write_lines(seg, &out);
    prev
}

#[tokio::test]
async fn full_rewrite_without_the_key_fails_the_signature() {
    let t = TempDir::new("rewrite");
    sample_log(&t).await;
    let seg = &segments(&t)[0];
    let original = std::fs::read_to_string(seg).unwrap();
    let new_hash = rewrite_chain(seg);
    assert_ne!(original, std::fs::read_to_string(seg).unwrap());

    // Untouched head: the signed record no longer matches.
    let r = check(&t);
    assert!(!r.ok);
    assert!(has(&r, IssueKind::HeadMismatch), "{:#?}", r.issues);
    // The chain itself is consistent: only the signature layer can tell.
    assert!(
        !has(&r, IssueKind::Modified) && !has(&r, IssueKind::SessionChain),
        "{:#?}",
        r.issues
    );

    // Head updated to the new hash, old signature kept.
    let head_path = t.log().join("head.json");
    let mut head: SignedHead = serde_json::from_slice(&std::fs::read(&head_path).unwrap()).unwrap();
    head.hash = new_hash;
    std::fs::write(&head_path, serde_json::to_vec(&head).unwrap()).unwrap();
    let r = check(&t);
    assert!(!r.ok);
    assert!(has(&r, IssueKind::BadSignature), "{:#?}", r.issues);
    assert!(!has(&r, IssueKind::HeadMismatch), "{:#?}", r.issues);

    // Head re-signed with the attacker's own key: still not the log's key.
    let other = TempDir::new("rewrite-key");
    generate_key(&other.path().join("k"), false).unwrap();
    let attacker = load_signing_key(&other.path().join("k")).unwrap();
    let forged = super::record::SignedHead::sign(&attacker, head.seq, new_hash, head.ts);
    std::fs::write(&head_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let r = check(&t);
    assert!(!r.ok);
    assert!(has(&r, IssueKind::BadSignature), "{:#?}", r.issues);
    // …and it verifies only under the attacker's key.
    assert!(verify(&t.log(), &attacker.verifying_key()).unwrap().ok);
}

fn small_segments(t: &TempDir) -> AuditConfig {
    AuditConfig {
        segment_max_bytes: 2_000,
        ..config(t)
    }
}

#[tokio::test]
async fn deleted_segments_are_detected() {
    let t = TempDir::new("segments");
    let rec = open(&small_segments(&t), &t);
    for i in 0..6 {
        session(&rec, &format!("user{i}"), "demo-db", 4).await;
    }
    rec.close().await.unwrap();
    let segs = segments(&t);
    assert!(segs.len() >= 4, "{segs:?}");
    assert!(check(&t).ok);

    std::fs::rename(&segs[1], t.path().join("aside")).unwrap();
    let r = check(&t);
    assert!(!r.ok);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Deleted)
        .expect("deleted");
    assert_eq!(
        issue.file.as_deref(),
        segs[2].file_name().and_then(|n| n.to_str()),
        "{issue}"
    );
    std::fs::rename(t.path().join("aside"), &segs[1]).unwrap();
    assert!(check(&t).ok);

    // Deleting the oldest segment looks like retention, but no anchor vouches for it.
    std::fs::remove_file(&segs[0]).unwrap();
    let r = check(&t);
    assert!(!r.ok);
    assert!(
        r.issues
            .iter()
            .any(|i| i.kind == IssueKind::Deleted && i.message.contains("no retention anchor")),
        "{:#?}",
        r.issues
    );
}

#[tokio::test]
async fn retention_keeps_what_remains_verifiable() {
    let t = TempDir::new("retention");
    let cfg = AuditConfig {
        retention: RetentionConfig {
            max_age: None,
            max_bytes: Some(6_000),
        },
        ..small_segments(&t)
    };
    let rec = open(&cfg, &t);
    for i in 0..12 {
        session(&rec, &format!("user{i}"), "demo-db", 4).await;
    }
    rec.close().await.unwrap();
    let total: u64 = segments(&t)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        total <= 6_000 + 2_000 + 1_000,
        "retention kept {total} bytes"
    );
    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
    let anchored = r.anchored_seq.expect("retention wrote an anchor");
    assert!(anchored > 0);
    assert_eq!(r.first_seq, Some(anchored));
    // Sessions whose start was deleted are simply not listed.
    let listed = search_sessions(&t.log(), &SessionQuery::default()).unwrap();
    assert!(!listed.is_empty() && listed.len() < 12, "{}", listed.len());

    // Reopen (a restart also applies retention) and keep writing: still verifies.
    let rec = open(&cfg, &t);
    session(&rec, "late", "demo-db", 2).await;
    rec.close().await.unwrap();
    assert!(check(&t).ok);

    // Deleting one more old segment by hand is caught by the anchor.
    std::fs::remove_file(&segments(&t)[0]).unwrap();
    let r = check(&t);
    assert!(!r.ok);
    assert!(has(&r, IssueKind::Deleted), "{:#?}", r.issues);

    // A forged anchor (not signed by the key) is caught too.
    let anchor_path = t.log().join("anchor.json");
    let mut a: SignedAnchor =
        serde_json::from_slice(&std::fs::read(&anchor_path).unwrap()).unwrap();
    let first = read_records(&t.log()).unwrap().remove(0);
    a.seq = first.seq;
    a.prev = first.prev;
    std::fs::write(&anchor_path, serde_json::to_vec(&a).unwrap()).unwrap();
    let r = check(&t);
    assert!(has(&r, IssueKind::BadSignature), "{:#?}", r.issues);
}

#[tokio::test]
async fn retention_by_age_keeps_what_remains_verifiable() {
    let t = TempDir::new("retention-age");
    let rec = open(&small_segments(&t), &t);
    for i in 0..4 {
        session(&rec, &format!("user{i}"), "demo-db", 4).await;
    }
    rec.close().await.unwrap();
    let before = segments(&t).len();
    assert!(before >= 3, "{before}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A restart applies retention: every segment older than a second goes. (Segments large
    // enough now that the fresh session fits in one.)
    let cfg = AuditConfig {
        retention: RetentionConfig {
            max_age: Some(Duration::from_secs(1)),
            max_bytes: None,
        },
        segment_max_bytes: 1 << 20,
        ..small_segments(&t)
    };
    let rec = open(&cfg, &t);
    session(&rec, "fresh", "demo-db", 1).await;
    rec.close().await.unwrap();
    assert_eq!(segments(&t).len(), 1);
    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
    assert_eq!(r.first_seq, r.anchored_seq);
    assert_eq!(r.sessions, 1);
}

/// Retention decides from nothing an intruder can set without the key: a sparse file named
/// past the active segment counts for nothing, a segment's age is its last record's time (not
/// its mtime), and segments that are not the chain are never deleted under a fresh anchor.
#[tokio::test]
async fn retention_is_not_steered_by_files_it_did_not_write() {
    let t = TempDir::new("retention-steer");
    let rec = open(&small_segments(&t), &t);
    for i in 0..6 {
        session(&rec, &format!("user{i}"), "demo-db", 4).await;
    }
    rec.close().await.unwrap();
    let before = segments(&t);
    assert!(before.len() >= 4, "{before:?}");
    let anchor = t.log().join("anchor.json");
    let sized = |max_bytes| AuditConfig {
        retention: RetentionConfig {
            max_age: None,
            max_bytes: Some(max_bytes),
        },
        ..small_segments(&t)
    };

    // A terabyte-long sparse file named after every segment, seen by the running writer's
    // retention pass: not part of the chain, it counts for nothing.
    let (key, _) = secret(&t);
    let current = before.last().unwrap();
    let tip = read_records(&t.log()).unwrap().pop().unwrap();
    let next = (tip.seq + 1, ChainHash::ZERO);
    let sparse = t.log().join("10000000000000000000.jsonl");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    super::writer::apply_retention(&t.log(), &key, &sized(1 << 30).retention, current, next)
        .unwrap();
    std::fs::remove_file(&sparse).unwrap();
    for seg in &before {
        assert!(seg.exists(), "{} was deleted", seg.display());
    }
    assert!(!anchor.exists(), "no anchor signed");
    assert!(check(&t).ok);

    // An old mtime on a copy of the oldest segment: its records are new, so it stays.
    let copy = t.path().join("copy");
    std::fs::copy(&before[0], &copy).unwrap();
    let old = std::fs::File::options().write(true).open(&copy).unwrap();
    old.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    drop(old);
    std::fs::rename(&copy, &before[0]).unwrap();
    let aged = AuditConfig {
        retention: RetentionConfig {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: None,
        },
        ..small_segments(&t)
    };
    let rec = open(&aged, &t);
    session(&rec, "aged", "demo-db", 1).await;
    rec.close().await.unwrap();
    assert!(before[0].exists(), "deleted by a forged mtime");
    assert!(!anchor.exists());

    // Lines slipped into an old segment: retention would delete the evidence under a fresh
    // anchor, so it deletes nothing and the change stays for verify to name.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&before[1])
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![b'x'; 100_000]).unwrap();
    std::io::Write::write_all(&mut f, b"\n").unwrap();
    drop(f);
    let rec = open(&sized(6_000), &t);
    session(&rec, "tamper", "demo-db", 1).await;
    rec.close().await.unwrap();
    assert!(before[0].exists() && before[1].exists());
    assert!(!anchor.exists());
    let r = check(&t);
    assert!(!r.ok, "the change is still there to be found");
}

/// Files the writer replaces or appends to are never opened through a link: a link planted
/// at head.json's temporary name does not make the writer overwrite what it points at.
#[tokio::test]
async fn the_writer_does_not_follow_links_in_the_log_directory() {
    let t = TempDir::new("links");
    let rec = open(&config(&t), &t);
    session(&rec, "before", "demo-db", 1).await;
    rec.flush().await.unwrap();
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // Every name this process's next head writes could use (the counter is shared by the
    // tests running beside this one).
    for n in 0..10_000 {
        let name = format!(".head.json.{}.{n}.tmp", std::process::id());
        std::os::unix::fs::symlink(&victim, t.log().join(name)).unwrap();
    }
    session(&rec, "after", "demo-db", 1).await;
    rec.close().await.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(check(&t).ok);

    // A link named like a segment is not read as one: to verify that segment is missing.
    let segs = segments(&t);
    let last = segs.last().unwrap().clone();
    let moved = t.path().join("moved");
    std::fs::rename(&last, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &last).unwrap();
    assert!(!segments(&t).contains(&last));
}

/// A value a client put in a record cannot drive the reviewer's terminal: control
/// characters come out escaped, and its line breaks as marked continuation lines.
#[test]
fn transcripts_escape_what_would_act_on_a_terminal() {
    let mut out = Vec::new();
    let mut safe = cli::TermSafe(&mut out);
    std::io::Write::write_all(
        &mut safe,
        "SELECT 1 /*\r\u{1b}[2K allow\u{1b}[8m \u{202e}x \u{9b}*/".as_bytes(),
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(
        !text.contains('\u{202e}') && !text.contains('\u{9b}'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}[2K"), "{text:?}");
    assert_eq!(
        cli::escape_controls("two\nlines"),
        "two\nlines",
        "newlines are left to the layout"
    );
}

#[tokio::test]
async fn export_round_trips() {
    let t = TempDir::new("export");
    sample_log(&t).await;
    let file = t.path().join("export.jsonl");
    let mut out = std::fs::File::create(&file).unwrap();
    let n = export(&t.log(), &mut out).unwrap();
    drop(out);
    assert_eq!(n, 25);
    let r = verify_export(&file, &public(&t)).unwrap();
    assert!(r.ok, "{:#?}", r.issues);
    assert_eq!((r.records, r.signed_seq), (25, Some(24)));

    // Import into a new directory: verifies with the same key, same records.
    let copy = t.path().join("copy");
    assert_eq!(import(&file, &copy).unwrap(), 25);
    let r2 = verify(&copy, &public(&t)).unwrap();
    assert!(r2.ok, "{:#?}", r2.issues);
    assert_eq!(
        read_records(&copy).unwrap(),
        read_records(&t.log()).unwrap()
    );

    // A tampered export fails, naming the export line.
    let mut lines = read_lines(&file);
    lines[10] = lines[10].replacen("\"bytes\":42", "\"bytes\":43", 1);
    write_lines(&file, &lines);
    let r = verify_export(&file, &public(&t)).unwrap();
    assert!(!r.ok);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Modified)
        .expect("modified");
    assert_eq!(issue.line, Some(11), "{issue}");
    assert_eq!(issue.file.as_deref(), Some("export.jsonl"));
}

#[tokio::test]
async fn masked_values_never_reach_the_log() {
    let t = TempDir::new("mask");
    let rec = open(&config(&t), &t);
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(SessionStart {
        proxy_session: None,
        identity: &id,
        workload: None,
        target: "demo-db",
        protocol: Protocol::Postgres,
        client: None,
        original_dst: None,
        tls: None,
    })
    .await
    .unwrap();
    let (n, ack) = s
        .command(read_event(
            &sql("SELECT id, email FROM customers"),
            &allow(),
        ))
        .await
        .unwrap();
    ack.durable().await.unwrap();
    // The answer the masker saw; only rule names and counts can go to the recorder.
    let answer = [
        ("1", "alice.secret@example.com"),
        ("2", "bob.hidden@example.org"),
    ];
    let mut tally = MaskTally::default();
    for _ in &answer {
        tally.add("email", 1);
    }
    s.masking(n, &tally).await.unwrap().durable().await.unwrap();
    s.result(
        n,
        CommandResult {
            rows: Some(2),
            bytes: 120,
            duration: Duration::from_micros(500),
            error: None,
            ..CommandResult::default()
        },
    )
    .await
    .unwrap()
    .durable()
    .await
    .unwrap();
    s.end(SessionEnd {
        reason: EndReason::ClientClosed,
        detail: None,
        bytes_from_client: 1,
        bytes_to_client: 2,
    })
    .await
    .unwrap();
    rec.close().await.unwrap();

    let mut all = Vec::new();
    for entry in std::fs::read_dir(t.log()).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let all = String::from_utf8_lossy(&all);
    for (_, value) in answer {
        assert!(!all.contains(value), "masked value {value} in the log");
        assert!(!all.contains(value.split('@').next().unwrap()));
    }
    let masking: Vec<_> = read_records(&t.log())
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Masking(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(
        masking,
        vec![MaskingRecord {
            n: 1,
            rules: vec![MaskCount {
                rule: "email".into(),
                values: 2
            }]
        }]
    );
}

#[tokio::test]
async fn full_storage_refuses_sessions_unless_fail_open() {
    let t = TempDir::new("full");
    let cfg = AuditConfig {
        min_free_bytes: u64::MAX,
        ..config(&t)
    };
    let rec = open(&cfg, &t);
    match rec.admit_session() {
        Err(AuditError::StorageFull(m)) => assert!(m.contains("min_free_bytes"), "{m}"),
        other => panic!("expected refusal, got {other:?}"),
    }
    rec.close().await.unwrap();

    let cfg = AuditConfig {
        on_full: OnFull::Allow,
        ..cfg
    };
    let rec = open(&cfg, &t);
    let mut s = rec.admit_session().unwrap();
    assert!(!s.is_recording());
    let id = identity("alice");
    s.start(SessionStart {
        proxy_session: None,
        identity: &id,
        workload: None,
        target: "demo-db",
        protocol: Protocol::Postgres,
        client: None,
        original_dst: None,
        tls: None,
    })
    .await
    .unwrap();
    assert_eq!(rec.unrecorded(), 1);
    rec.close().await.unwrap();
    assert!(
        search_sessions(&t.log(), &SessionQuery::default())
            .unwrap()
            .is_empty()
    );
    assert!(check(&t).ok);
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    /// Mounts it, or says why the test cannot run: a skip outside CI (mounting needs
    /// CAP_SYS_ADMIN), a failure in CI.
    fn mount(at: PathBuf, size: &str) -> Option<Self> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs at {} (needs root)",
                at.display()
            );
            eprintln!("skipping: cannot mount a tmpfs here");
        }
        ok.then_some(SmallFs(at))
    }

    /// Fills the file system to the last byte; returns the filler file.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        while std::io::Write::write_all(&mut f, &chunk[..1]).is_ok() {}
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn start_of(id: &Identity) -> SessionStart<'_> {
    SessionStart {
        proxy_session: None,
        identity: id,
        workload: None,
        target: "demo-db",
        protocol: Protocol::Postgres,
        client: None,
        original_dst: None,
        tls: None,
    }
}

#[tokio::test]
async fn disk_full_rejects_records_refuses_sessions_and_recovers() {
    let t = TempDir::new("enospc");
    // The min_free_bytes path is tested apart.
    let Some(fs) = SmallFs::mount(t.path().join("fs"), "256k") else {
        return;
    };
    let cfg = AuditConfig {
        dir: Some(fs.0.join("log")),
        min_free_bytes: 64 << 10,
        ..config(&t)
    };
    let rec = open(&cfg, &t);
    session(&rec, "before", "demo-db", 3).await;
    rec.flush().await.unwrap();
    // Admitted while there is room; the disk fills up during the session.
    let mut s = rec.admit_session().unwrap();
    let filler = fs.fill();

    let id = identity("during");
    // The segment's last page may still have room for a few records.
    let mut err = s.start(start_of(&id)).await.err();
    let decision = allow();
    let text = "SELECT 'x' /* padding */ ".repeat(20);
    for _ in 0..100 {
        if err.is_some() {
            break;
        }
        err = match s.command(read_event(&sql(&text), &decision)).await {
            Ok((_, ack)) => ack.durable().await.err(),
            Err(e) => Some(e),
        };
    }
    let err = err.expect("appends fail on a full disk");
    assert!(matches!(err, AuditError::StorageFull(_)), "{err}");
    drop(s);
    // Fail closed: new sessions are refused while the disk is full.
    assert!(matches!(
        rec.admit_session(),
        Err(AuditError::StorageFull(_))
    ));
    // The dropped session's end record is written (and fails) on the writer's thread: wait
    // for it, or verify may read its partial line before the writer cuts it back.
    let _ = rec.flush().await;
    // The failed group was cut back: no partial line, the log still verifies.
    let r = verify(&cfg.dir.clone().unwrap(), &public(&t)).unwrap();
    assert!(r.ok && !has(&r, IssueKind::TornTail), "{:#?}", r.issues);

    // Space comes back: after the hold-off a new session is admitted and recorded.
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sid = session(&rec, "after", "demo-db", 2).await;
    rec.close().await.unwrap();
    let r = verify(&cfg.dir.clone().unwrap(), &public(&t)).unwrap();
    assert!(r.ok, "{:#?}", r.issues);
    let found = search_sessions(&cfg.dir.clone().unwrap(), &SessionQuery::default()).unwrap();
    assert_eq!(found.first().map(|s| s.subject.as_str()), Some("before"));
    assert_eq!(found.last().map(|s| s.id.as_str()), Some(sid.as_str()));
}

/// A record nobody awaits (a result) that goes down with a failed write leaves a gap in its
/// session the session was not told about: its later records are refused, so its next
/// command fails (fail closed) even once the disk has room again.
#[tokio::test]
async fn a_result_lost_in_a_failed_write_fails_its_sessions_next_command() {
    let t = TempDir::new("lost-result");
    let Some(fs) = SmallFs::mount(t.path().join("fs"), "256k") else {
        return;
    };
    let cfg = AuditConfig {
        dir: Some(fs.0.join("log")),
        min_free_bytes: 0,
        fsync: FsyncPolicy::Batch,
        // No timed write: only awaited records write the buffer.
        batch_interval: Duration::from_secs(30),
        ..config(&t)
    };
    let rec = open(&cfg, &t);
    let (alice, bob) = (identity("alice"), identity("bob"));
    let mut a = rec.admit_session().unwrap();
    a.start(start_of(&alice)).await.unwrap();
    let mut b = rec.admit_session().unwrap();
    b.start(start_of(&bob)).await.unwrap();
    let (n, ack) = a
        .command(read_event(&sql("SELECT 1"), &allow()))
        .await
        .unwrap();
    ack.durable().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Larger than the free end of the segment's last page: its write needs a new page.
    let result = a
        .result(
            n,
            CommandResult {
                error: Some("e".repeat(8192)),
                ..CommandResult::default()
            },
        )
        .await
        .unwrap();
    assert!(result.is_buffered());
    drop(result);
    let filler = fs.fill();
    // Bob's command is awaited: the write carrying alice's result with it fails.
    let (_, ack) = b
        .command(read_event(&sql("SELECT 2"), &allow()))
        .await
        .unwrap();
    let err = ack.durable().await.expect_err("the disk is full");
    assert!(matches!(err, AuditError::StorageFull(_)), "{err}");
    std::fs::remove_file(&filler).unwrap();
    // Room again, but alice's result is gone: her next command must not be answered.
    let next = match a.command(read_event(&sql("SELECT 3"), &allow())).await {
        Ok((_, ack)) => ack.durable().await,
        Err(e) => Err(e),
    };
    let err = next.expect_err("a session with a lost record fails closed");
    assert!(err.to_string().contains("lost in a failed write"), "{err}");
    drop((a, b));
    rec.close().await.unwrap();
    let r = verify(&cfg.dir.clone().unwrap(), &public(&t)).unwrap();
    assert!(r.ok, "{:#?}", r.issues);
}

#[tokio::test]
async fn missing_key_with_an_existing_log_is_refused() {
    let t = TempDir::new("nokey");
    sample_log(&t).await;
    std::fs::rename(t.path().join("audit.key"), t.path().join("moved.key")).unwrap();
    match Recorder::open(&config(&t), t.path()) {
        Err(AuditError::Key { message, .. }) => assert!(message.contains("restore"), "{message}"),
        other => panic!("expected a key error, got {other:?}"),
    }
    std::fs::rename(t.path().join("moved.key"), t.path().join("audit.key")).unwrap();
    let rec = open(&config(&t), &t);
    rec.close().await.unwrap();
    let r = check(&t);
    assert!(r.ok && !has(&r, IssueKind::KeyChanged), "{:#?}", r.issues);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_never_loses_records() {
    let t = TempDir::new("backpressure");
    let cfg = AuditConfig {
        queue_capacity: 1,
        ..config(&t)
    };
    let rec = open(&cfg, &t);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let rec = rec.clone();
        tasks.push(tokio::spawn(async move {
            session(&rec, &format!("u{i}"), "demo-db", 10).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    rec.close().await.unwrap();
    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
    assert_eq!(r.records, 1 + 40 * 22);
    assert_eq!((r.sessions, r.open_sessions), (40, 0));
}

/// Fire-and-forget pipelines from many sessions at once, with a one-slot queue and the
/// writer stalled now and then: sessions append inline while the writer is free and queue
/// behind it when not, so both paths mix. Each session's records must still be in the order
/// it made them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_queued_appends_keep_each_sessions_order() {
    let t = TempDir::new("inline-order");
    let cfg = AuditConfig {
        queue_capacity: 1,
        fsync: FsyncPolicy::Batch,
        ..config(&t)
    };
    let rec = open(&cfg, &t);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let staller = {
        let (rec, done) = (rec.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                rec.stall_writer(Duration::from_micros(500)).join().unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..16 {
        let rec = rec.clone();
        tasks.push(tokio::spawn(async move {
            let id = identity(&format!("u{i}"));
            let mut s = rec.admit_session().unwrap();
            s.start(start_of(&id)).await.unwrap();
            let decision = allow();
            let mut acks = Vec::new();
            for c in 0..200 {
                let text = format!("SELECT {c}");
                let (n, ack) = s.command(read_event(&sql(&text), &decision)).await.unwrap();
                acks.push(ack);
                acks.push(s.result(n, CommandResult::default()).await.unwrap());
            }
            for ack in acks {
                ack.durable().await.unwrap();
            }
            s.end(SessionEnd {
                reason: EndReason::ClientClosed,
                detail: None,
                bytes_from_client: 0,
                bytes_to_client: 0,
            })
            .await
            .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    staller.join().unwrap();
    let queued = rec.queued_appends();
    assert!(
        queued > 0 && queued < 16 * 402,
        "both paths ran: {queued} of {} appends queued",
        16 * 402
    );
    rec.close().await.unwrap();
    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
    assert_eq!(r.records, 1 + 16 * (1 + 400 + 1));
    // Per session: start, then command n and its result for n = 1, 2, … in order, then end.
    let mut expected: HashMap<String, (u64, bool)> = HashMap::new();
    for seg in segments(&t) {
        for line in read_lines(&seg) {
            let rec: Record = serde_json::from_str(&line).unwrap();
            let Some(session) = rec.session else { continue };
            let (next, result_due) = expected.entry(session.clone()).or_insert((1, false));
            match rec.event {
                Event::Command(c) => {
                    assert!(
                        !*result_due && c.n == *next,
                        "{session}: command {} out of order",
                        c.n
                    );
                    *result_due = true;
                }
                Event::Result(res) => {
                    assert!(
                        *result_due && res.n == *next,
                        "{session}: result {} out of order",
                        res.n
                    );
                    *result_due = false;
                    *next += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(expected.len(), 16);
    assert!(
        expected.values().all(|&(next, due)| next == 201 && !due),
        "{expected:?}"
    );
}

/// With `fsync: batch` an append that finds the writer free goes into the writer's buffer
/// without waking the writer thread, and is in the file once `durable()` returns. With
/// `fsync: always` every append goes through the queue and waits for the writer's sync.
#[tokio::test]
async fn uncontended_batch_appends_are_buffered_inline() {
    for fsync in [FsyncPolicy::Batch, FsyncPolicy::Always] {
        let t = TempDir::new("inline");
        let rec = open(
            &AuditConfig {
                fsync,
                ..config(&t)
            },
            &t,
        );
        let id = identity("alice");
        let mut s = rec.admit_session().unwrap();
        s.start(start_of(&id)).await.unwrap();
        let queued_before = rec.queued_appends();
        for i in 0..20 {
            let text = format!("SELECT 'inline-marker-{i}'");
            let (_, ack) = s.command(read_event(&sql(&text), &allow())).await.unwrap();
            ack.durable().await.unwrap();
            let needle = format!("inline-marker-{i}'");
            assert_eq!(
                lines_with(&t, &needle),
                1,
                "record {i} is in the segment when durable() returns"
            );
        }
        // The writer thread takes its lock briefly for its timers: an append that meets it
        // queues, so count over several.
        let queued = rec.queued_appends() - queued_before;
        match fsync {
            FsyncPolicy::Batch => assert!(queued < 20, "every append went through the queue"),
            FsyncPolicy::Always => assert_eq!(queued, 20, "fsync: always queues every append"),
        }
        drop(s);
        rec.close().await.unwrap();
        assert!(check(&t).ok);
    }
}

/// A record nobody awaits (a result) stays in the writer's buffer and goes to the file with
/// the next awaited one (the next command): one write for both, in chain order.
#[tokio::test]
async fn a_result_is_written_with_the_next_awaited_command() {
    let t = TempDir::new("coalesce");
    let rec = open(
        &AuditConfig {
            fsync: FsyncPolicy::Batch,
            // No timed write during the test: only an awaited record writes the buffer.
            batch_interval: Duration::from_secs(30),
            ..config(&t)
        },
        &t,
    );
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(start_of(&id)).await.unwrap();
    let (n, ack) = s
        .command(read_event(&sql("SELECT 'first'"), &allow()))
        .await
        .unwrap();
    ack.durable().await.unwrap();
    // Let the writer thread take its kick and go back to sleep: an append that met it
    // holding the lock would queue (and be written at once) instead.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let result = s
        .result(
            n,
            CommandResult {
                rows: Some(4242),
                ..CommandResult::default()
            },
        )
        .await
        .unwrap();
    assert!(result.is_buffered(), "a result is buffered, not written");
    drop(result);
    assert_eq!(
        lines_with(&t, "\"rows\":4242"),
        0,
        "the result waits in the buffer"
    );
    let (_, ack) = s
        .command(read_event(&sql("SELECT 'second'"), &allow()))
        .await
        .unwrap();
    ack.durable().await.unwrap();
    assert_eq!(
        lines_with(&t, "\"rows\":4242"),
        1,
        "written with the next command"
    );
    assert_eq!(lines_with(&t, "SELECT 'second'"), 1);
    drop(s);
    rec.close().await.unwrap();
    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
}

/// Records appended inline never pass through the queue, so only the kick wakes the writer
/// thread (asleep with no timer after the `open` record) to write what nobody awaited (the
/// last result), sync it and let the syncer sign a head that covers it, without a flush or a
/// close.
#[tokio::test]
async fn inline_appends_are_synced_and_signed_without_a_flush() {
    let t = TempDir::new("inline-sync");
    let rec = open(
        &AuditConfig {
            fsync: FsyncPolicy::Batch,
            batch_interval: Duration::from_millis(10),
            head_interval: Duration::from_millis(20),
            ..config(&t)
        },
        &t,
    );
    // Let the writer go to sleep with nothing unsynced.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(start_of(&id)).await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        let text = format!("SELECT {i}");
        let (n, ack) = s.command(read_event(&sql(&text), &allow())).await.unwrap();
        last = ack.durable().await.unwrap();
        // Nobody awaits the result: the writer thread writes it with its batch sync.
        drop(s.result(n, CommandResult::default()).await.unwrap());
        last += 1;
    }
    let head = |t: &TempDir| -> u64 {
        let bytes = std::fs::read(t.log().join("head.json")).unwrap();
        serde_json::from_slice::<SignedHead>(&bytes).unwrap().seq
    };
    let mut signed = head(&t);
    for _ in 0..200 {
        if signed >= last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        signed = head(&t);
    }
    assert_eq!(
        signed, last,
        "the head covers the inline records, the unawaited result too"
    );
    drop(s);
    rec.close().await.unwrap();
}

#[tokio::test]
async fn pipelined_records_are_acknowledged_in_order() {
    let t = TempDir::new("pipelined");
    let rec = open(&config(&t), &t);
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(SessionStart {
        proxy_session: None,
        identity: &id,
        workload: None,
        target: "demo-db",
        protocol: Protocol::Postgres,
        client: None,
        original_dst: None,
        tls: None,
    })
    .await
    .unwrap();
    let decision = allow();
    let mut acks = Vec::new();
    for i in 0..300 {
        let text = format!("SELECT {i}");
        let (n, ack) = s.command(read_event(&sql(&text), &decision)).await.unwrap();
        acks.push(ack);
        // Fire and forget: the record is still written, in order.
        drop(s.result(n, CommandResult::default()).await.unwrap());
    }
    let mut seqs = Vec::new();
    for ack in acks {
        seqs.push(ack.durable().await.unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 2), "{seqs:?}");
    s.end(SessionEnd {
        reason: EndReason::ClientClosed,
        detail: None,
        bytes_from_client: 0,
        bytes_to_client: 0,
    })
    .await
    .unwrap();
    rec.close().await.unwrap();
    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
    assert_eq!(r.records, 1 + 1 + 600 + 1);
}

#[tokio::test]
async fn dropped_session_gets_an_end_record() {
    let t = TempDir::new("drop");
    let rec = open(&config(&t), &t);
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(SessionStart {
        proxy_session: None,
        identity: &id,
        workload: None,
        target: "demo-db",
        protocol: Protocol::Postgres,
        client: None,
        original_dst: None,
        tls: None,
    })
    .await
    .unwrap();
    drop(s);
    rec.close().await.unwrap();
    let records = read_records(&t.log()).unwrap();
    assert!(
        matches!(&records.last().unwrap().event, Event::SessionEnd(e) if e.reason == EndReason::Dropped)
    );
    assert!(check(&t).ok);
}

#[tokio::test]
async fn torn_tail_is_tolerated_only_at_the_end_and_repaired() {
    let t = TempDir::new("torn");
    sample_log(&t).await;
    let seg = segments(&t)[0].clone();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    let fragment = b"{\"seq\":25,\"ts\":1,\"prev\":\"00";
    std::io::Write::write_all(&mut f, fragment).unwrap();
    drop(f);
    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
    assert!(
        r.issues.iter().any(|i| i.kind == IssueKind::TornTail
            && i.severity == Severity::Warning
            && i.line == Some(26)),
        "{:#?}",
        r.issues
    );

    // Restart: the fragment is cut off and the cut is recorded on the chain.
    let rec = open(&config(&t), &t);
    session(&rec, "carol", "demo-db", 1).await;
    rec.close().await.unwrap();
    let r = check(&t);
    assert!(r.ok && r.issues.is_empty(), "{:#?}", r.issues);
    let opens: Vec<_> = read_records(&t.log())
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Open(o) => o.torn,
            _ => None,
        })
        .collect();
    assert_eq!(opens.len(), 1);
    assert_eq!(
        (opens[0].offset, opens[0].bytes),
        (
            std::fs::metadata(&seg).unwrap().len(),
            fragment.len() as u64
        )
    );

    // The same fragment in a segment that is not the newest is an error.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":25").unwrap();
    drop(f);
    let r = check(&t);
    assert!(!r.ok);
    assert!(has(&r, IssueKind::PartialRecord), "{:#?}", r.issues);
}

#[test]
fn config_section_parses() {
    let text = "daemon:\n  audit:\n    dir: /tmp/x\n    fsync: batch\n    batch_interval: 5ms\n    retention:\n      max_age: 7d\n      max_bytes: 1000000\n    on_full: allow\n";
    let c = crate::config::Config::parse(Path::new("c.yaml"), text).unwrap();
    let a = &c.daemon.audit;
    assert_eq!(a.fsync, FsyncPolicy::Batch);
    assert_eq!(a.batch_interval, Duration::from_millis(5));
    assert_eq!(a.retention.max_age, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(a.on_full, OnFull::Allow);
    assert_eq!(
        a.dir(Path::new("/var/lib/airlock")),
        PathBuf::from("/tmp/x")
    );
    assert_eq!(
        a.signing_key(Path::new("/s")),
        PathBuf::from("/s/audit.key")
    );
    let defaults = crate::config::Config::parse(Path::new("c.yaml"), "daemon: {}\n").unwrap();
    assert_eq!(defaults.daemon.audit.fsync, FsyncPolicy::Batch);
    assert_eq!(defaults.daemon.audit.on_full, OnFull::Refuse);
    let err = crate::config::Config::parse(
        Path::new("c.yaml"),
        "daemon:\n  audit:\n    fsync: sometimes\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("c.yaml:3:"), "{err}");
    let err = crate::config::Config::parse(
        Path::new("c.yaml"),
        "daemon:\n  audit:\n    head_interval: soon\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("c.yaml:3:") && err.contains("not a duration"),
        "{err}"
    );
}

#[tokio::test]
async fn cli_verify_fails_on_a_tampered_log() {
    let t = TempDir::new("cli");
    sample_log(&t).await;
    let args = cli::VerifyArgs {
        log: cli::LogLocation {
            config: None,
            dir: Some(t.log()),
        },
        key: Some(public_key_path(&t.path().join("audit.key"))),
        export: None,
        heads: None,
        strict: false,
        json: true,
    };
    cli::verify(&args).unwrap();
    let seg = &segments(&t)[0];
    let mut lines = read_lines(seg);
    lines.remove(3);
    write_lines(seg, &lines);
    assert!(cli::verify(&args).is_err());
}

#[tokio::test]
async fn cli_functions_work_end_to_end() {
    let t = TempDir::new("cli-all");
    sample_log(&t).await;
    let log = cli::LogLocation {
        config: None,
        dir: Some(t.log()),
    };
    cli::sessions(&cli::SessionsArgs {
        log: log.clone(),
        identity: Some("alice".into()),
        target: None,
        since: Some("1h".into()),
        until: None,
        text: Some("select 3".into()),
        limit: None,
        json: true,
    })
    .unwrap();
    assert!(
        cli::sessions(&cli::SessionsArgs {
            log: log.clone(),
            identity: None,
            target: None,
            since: Some("last tuesday".into()),
            until: None,
            text: None,
            limit: None,
            json: false,
        })
        .is_err()
    );
    let sid = search_sessions(&t.log(), &SessionQuery::default()).unwrap()[0]
        .id
        .clone();
    cli::replay(&cli::ReplayArgs {
        log: log.clone(),
        session: sid,
        json: false,
        transcript: false,
        command: None,
        speed: 1.0,
        instant: false,
    })
    .unwrap();
    assert!(
        cli::replay(&cli::ReplayArgs {
            log: log.clone(),
            session: "nope".into(),
            json: false,
            transcript: false,
            command: None,
            speed: 1.0,
            instant: false,
        })
        .is_err()
    );

    let out = t.path().join("out.jsonl");
    cli::export(&cli::ExportArgs {
        log: log.clone(),
        format: cli::ExportFormat::Jsonl,
        output: Some(out.clone()),
    })
    .unwrap();
    let key = Some(public_key_path(&t.path().join("audit.key")));
    cli::verify(&cli::VerifyArgs {
        log: log.clone(),
        key: key.clone(),
        export: Some(out.clone()),
        heads: None,
        strict: false,
        json: false,
    })
    .unwrap();
    let copy = t.path().join("imported");
    cli::import(&cli::ImportArgs {
        file: out,
        dir: copy.clone(),
    })
    .unwrap();
    cli::verify(&cli::VerifyArgs {
        log: cli::LogLocation {
            config: None,
            dir: Some(copy),
        },
        key,
        export: None,
        heads: None,
        strict: false,
        json: false,
    })
    .unwrap();

    let k = t.path().join("new.key");
    cli::keygen(&cli::KeygenArgs {
        log: log.clone(),
        out: Some(k.clone()),
        force: false,
    })
    .unwrap();
    assert!(
        cli::keygen(&cli::KeygenArgs {
            log,
            out: Some(k.clone()),
            force: false
        })
        .is_err(),
        "overwrote a key"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The wrong key does not verify the log.
    let wrong = load_public_key(&k).unwrap();
    let r = verify(&t.log(), &wrong).unwrap();
    assert!(!r.ok && has(&r, IssueKind::BadSignature));
}

const CRASH_ENV: &str = "AIRLOCK_AUDIT_CRASH_CHILD";

/// Child half of the crash test: records from four concurrent sessions forever and prints
/// `ACK <text>` after each acknowledged command. A no-op unless the parent set the env var.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let fsync = match std::env::var("AIRLOCK_AUDIT_CRASH_FSYNC").as_deref() {
        Ok("batch") => FsyncPolicy::Batch,
        _ => FsyncPolicy::Always,
    };
    let cfg = AuditConfig {
        dir: Some(dir.join("log")),
        signing_key: Some(dir.join("audit.key")),
        min_free_bytes: 0,
        fsync,
        segment_max_bytes: 16 << 10,
        ..AuditConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let rec = Recorder::open(&cfg, &dir).unwrap();
        let mut tasks = Vec::new();
        for k in 0..4 {
            let rec = rec.clone();
            tasks.push(tokio::spawn(async move {
                let id = identity(&format!("crash{k}"));
                let mut s = rec.admit_session().unwrap();
                s.start(SessionStart {
                    proxy_session: None,
                    identity: &id,
                    workload: None,
                    target: "demo-db",
                    protocol: Protocol::Postgres,
                    client: None,
                    original_dst: None,
                    tls: None,
                })
                .await
                .unwrap();
                let decision = allow();
                for i in 0.. {
                    let text = format!("SELECT {k}-{i}");
                    let (_, ack) = s.command(read_event(&sql(&text), &decision)).await.unwrap();
                    ack.durable().await.unwrap();
                    println!("ACK {text}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn crash_and_verify(fsync: &str) {
    let t = TempDir::new(&format!("crash-{fsync}"));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "audit::tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, t.path())
        .env("AIRLOCK_AUDIT_CRASH_FSYNC", fsync)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut line = String::new();
    while acked.len() < 400 {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited early after {} acks", acked.len());
        if let Some(text) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix('\n')) {
            acked.push(text.to_owned());
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-session, mid-write
    child.wait().unwrap();
    // Acks the child printed before it died.
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(text) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix('\n')) {
            acked.push(text.to_owned());
        }
    }

    let r = check(&t);
    assert!(r.ok, "{:#?}", r.issues);
    assert_eq!(r.open_sessions, 4);
    let logged: std::collections::HashSet<String> = read_records(&t.log())
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Command(c) => Some(c.text().into_owned()),
            _ => None,
        })
        .collect();
    for text in &acked {
        assert!(
            logged.contains(text),
            "acknowledged `{text}` is missing after kill -9"
        );
    }

    // The next start recovers (cutting any torn tail) and the log still verifies.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rec = open(&config(&t), &t);
        session(&rec, "after", "demo-db", 1).await;
        rec.close().await.unwrap();
    });
    let r = check(&t);
    assert!(r.ok && !has(&r, IssueKind::TornTail), "{:#?}", r.issues);
}

#[test]
fn crash_with_fsync_always_keeps_every_acknowledged_record() {
    crash_and_verify("always");
}

#[test]
fn crash_with_fsync_batch_keeps_every_acknowledged_record() {
    crash_and_verify("batch");
}

/// The signing key of the test log, and the MAC key derived from it.
fn secret(t: &TempDir) -> (ed25519_dalek::SigningKey, ring::hmac::Key) {
    let key = load_signing_key(&t.path().join("audit.key")).unwrap();
    let mac = record_mac_key(&key);
    (key, mac)
}

fn check_with_mac(t: &TempDir) -> Report {
    let (key, mac) = secret(t);
    verify_with(
        &t.log(),
        &VerifyOptions {
            public: &key.verifying_key(),
            mac: Some(&mac),
            heads: None,
        },
    )
    .unwrap()
}

/// A record an attacker without the key appends after the last signed head: the next seq,
/// the right prev, the shape of a real command record, and `mac` as given.
fn forge_append(t: &TempDir, mac: Option<&str>) -> String {
    let seg = segments(t).pop().unwrap();
    let lines = read_lines(&seg);
    let last = lines.last().unwrap();
    let prev: Record = serde_json::from_str(last).unwrap();
    let template = segments(t)
        .iter()
        .flat_map(|s| read_lines(s))
        .find(|l| l.contains("\"type\":\"command\""))
        .unwrap();
    let mut rec: Record = serde_json::from_str(&template).unwrap();
    rec.seq = prev.seq + 1;
    rec.prev = ChainHash::of_line(last.as_bytes());
    rec.session = None;
    rec.sprev = None;
    if let Event::Command(c) = &mut rec.event {
        c.command = sql("GRANT ALL ON salaries TO mallory").into_owned();
    }
    rec.mac = None;
    let mut line = serde_json::to_string(&rec).unwrap();
    if let Some(m) = mac {
        line.pop();
        line.push_str(&format!(",\"mac\":\"{m}\"}}"));
    }
    let mut all = lines.clone();
    all.push(line.clone());
    write_lines(&seg, &all);
    line
}

fn dir_snapshot(t: &TempDir) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(t.log())
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.sort();
    files
}

/// Issue 17, finding 3: a line with the right seq and prev appended after the last signed
/// head. Without a MAC, and with a made-up one: `verify --strict` fails (with only the public
/// key it is an unvouched tail; with the signing key, an unauthenticated record), and a start
/// refuses the log without changing a byte, so no head is ever signed over it.
#[tokio::test]
async fn a_forged_record_after_the_head_fails_strict_verify_and_is_refused_at_start() {
    for mac in [None, Some("ab".repeat(32))] {
        let t = TempDir::new("forged");
        sample_log(&t).await;
        assert!(check(&t).passes(true));
        forge_append(&t, mac.as_deref());

        // Public key only: the chain holds, but nothing vouches for the new record.
        let r = check(&t);
        assert!(r.ok, "{:#?}", r.issues);
        assert_eq!(r.unsigned_tail, 1);
        assert!(!r.passes(true), "--strict fails: {:#?}", r.issues);
        let tail = r
            .issues
            .iter()
            .find(|i| i.kind == IssueKind::UnsignedTail)
            .expect("an unsigned-tail warning");
        assert!(
            tail.severity == Severity::Warning && tail.unvouched && tail.seq == Some(25),
            "{tail}"
        );
        let args = |strict, key: &str| cli::VerifyArgs {
            log: cli::LogLocation {
                config: None,
                dir: Some(t.log()),
            },
            key: Some(t.path().join(key)),
            export: None,
            heads: None,
            strict,
            json: false,
        };
        cli::verify(&args(false, "audit.key.pub")).unwrap();
        let err = cli::verify(&args(true, "audit.key.pub")).unwrap_err();
        assert!(err.to_string().contains("--strict"), "{err}");

        // With the signing key, the record's MAC is checked: an error, strict or not.
        let r = check_with_mac(&t);
        assert!(!r.ok);
        let issue = r
            .issues
            .iter()
            .find(|i| i.kind == IssueKind::Unauthenticated)
            .expect("unauthenticated");
        assert_eq!(issue.seq, Some(25), "{issue}");
        assert!(cli::verify(&args(false, "audit.key")).is_err());

        // The daemon refuses to adopt it, and leaves the log exactly as it found it.
        let before = dir_snapshot(&t);
        let err = Recorder::open(&config(&t), t.path()).unwrap_err();
        match &err {
            AuditError::Corrupt { message, .. } => assert!(
                message.contains("seq 25")
                    && message.contains("will not sign over")
                    && message.contains("truncate -s"),
                "{message}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(dir_snapshot(&t), before, "a refused start changes nothing");
        // Refused again on the next try: the forged record never gets signed.
        assert!(Recorder::open(&config(&t), t.path()).is_err());
        let head: SignedHead =
            serde_json::from_slice(&std::fs::read(t.log().join("head.json")).unwrap()).unwrap();
        assert_eq!(head.seq, 24);
    }
}

/// Records the daemon itself wrote after its last signed head (a crash, or a head lost with
/// the page cache) carry its MACs: a start authenticates and adopts them, and says so on the
/// chain; verify with the signing key authenticates them too.
#[tokio::test]
async fn records_after_an_older_head_are_adopted_when_their_macs_hold() {
    let t = TempDir::new("adopt");
    let rec = open(&config(&t), &t);
    session(&rec, "alice", "demo-db", 2).await;
    rec.flush().await.unwrap();
    let older = std::fs::read(t.log().join("head.json")).unwrap();
    session(&rec, "bob", "demo-db", 2).await;
    rec.close().await.unwrap();
    // An older, genuinely signed head: the newest records look like a crash's tail.
    std::fs::write(t.log().join("head.json"), &older).unwrap();
    let r = check(&t);
    assert!(r.ok && r.unsigned_tail == 6 && !r.passes(true), "{r:#?}");
    let r = check_with_mac(&t);
    assert!(r.ok && r.passes(true), "{:#?}", r.issues);
    assert_eq!(r.authenticated_tail, 6);

    let rec = open(&config(&t), &t);
    rec.close().await.unwrap();
    let opens: Vec<_> = read_records(&t.log())
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Open(o) => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(opens.last().unwrap().unsigned_before, Some(6));
    assert_eq!(opens.last().unwrap().format, FORMAT);
    let r = check(&t);
    assert!(r.ok && r.passes(true) && r.unsigned_tail == 0, "{r:#?}");
}

/// The signed head follows every batch sync: records appended inline are covered by a head
/// within a few batch intervals, with the default configuration, no flush and no close.
#[tokio::test]
async fn the_signed_head_follows_each_batch_sync() {
    let t = TempDir::new("head-per-sync");
    let rec = open(
        &AuditConfig {
            fsync: FsyncPolicy::Batch,
            ..config(&t)
        },
        &t,
    );
    assert_eq!(AuditConfig::default().head_interval, Duration::ZERO);
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(start_of(&id)).await.unwrap();
    let mut last = 0;
    for round in 0..3 {
        for i in 0..5 {
            let text = format!("SELECT {round}, {i}");
            let (_, ack) = s.command(read_event(&sql(&text), &allow())).await.unwrap();
            last = ack.durable().await.unwrap();
        }
        // Well within the old 1 s head interval, and many batch intervals (10 ms).
        let mut signed = 0;
        for _ in 0..50 {
            let head: SignedHead =
                serde_json::from_slice(&std::fs::read(t.log().join("head.json")).unwrap()).unwrap();
            signed = head.seq;
            if signed >= last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(signed, last, "round {round}: the head covers the last sync");
    }
    drop(s);
    rec.close().await.unwrap();
}

/// The limit the key cannot cure: cut the newest records and put back an older, genuinely
/// signed head, and the files alone verify. Heads shipped off the host catch it.
#[test]
fn exported_heads_catch_a_log_cut_back_to_an_older_head() {
    let t = TempDir::new("heads");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rec = rt.block_on(async { open(&config(&t), &t) });
    let older = rt.block_on(async {
        session(&rec, "alice", "demo-db", 2).await;
        rec.flush().await.unwrap()
    });
    let older_head = std::fs::read(t.log().join("head.json")).unwrap();
    let log = cli::LogLocation {
        config: None,
        dir: Some(t.log()),
    };
    let heads_file = t.path().join("shipped-heads.jsonl");
    let export = |to: Vec<String>| {
        cli::export_heads(&cli::ExportHeadsArgs {
            log: log.clone(),
            to,
            follow: None,
            key: Some(t.path().join("audit.key.pub")),
        })
    };
    export(vec![heads_file.display().to_string()]).unwrap();
    rt.block_on(async {
        session(&rec, "bob", "demo-db", 3).await;
        rec.close().await.unwrap();
    });
    export(vec![heads_file.display().to_string()]).unwrap();
    let shipped = load_heads(&heads_file).unwrap();
    assert_eq!(shipped.len(), 2);
    assert_eq!(shipped[0].seq, older);
    let verify_heads = |strict| {
        cli::verify(&cli::VerifyArgs {
            log: log.clone(),
            key: Some(t.path().join("audit.key.pub")),
            export: None,
            heads: Some(heads_file.clone()),
            strict,
            json: false,
        })
    };
    verify_heads(true).unwrap();

    // The attack: everything after the older head goes, and that head comes back.
    let seg = segments(&t).pop().unwrap();
    let mut lines = read_lines(&seg);
    lines.truncate(usize::try_from(older + 1).unwrap());
    write_lines(&seg, &lines);
    std::fs::write(t.log().join("head.json"), &older_head).unwrap();
    let r = check_with_mac(&t);
    assert!(
        r.ok && r.passes(true),
        "the files alone verify: {:#?}",
        r.issues
    );
    // A start would continue it too: this is the documented limit.
    rt.block_on(async { open(&config(&t), &t).close().await.unwrap() });

    let (key, mac) = secret(&t);
    let r = verify_with(
        &t.log(),
        &VerifyOptions {
            public: &key.verifying_key(),
            mac: Some(&mac),
            heads: Some(("shipped-heads.jsonl", &shipped)),
        },
    )
    .unwrap();
    assert!(!r.ok);
    assert_eq!(r.heads_checked, 2);
    let issue = r
        .issues
        .iter()
        .find(|i| i.kind == IssueKind::Truncated)
        .expect("truncated");
    assert_eq!(
        (issue.file.as_deref(), issue.line, issue.seq),
        (Some("shipped-heads.jsonl"), Some(2), Some(shipped[1].seq)),
        "{issue}"
    );
    assert!(verify_heads(false).is_err());

    // A head that does not come from the log's key is refused as evidence.
    let mut forged = shipped[1].clone();
    forged.seq = 3;
    let r = verify_with(
        &t.log(),
        &VerifyOptions {
            public: &key.verifying_key(),
            mac: None,
            heads: Some(("forged", std::slice::from_ref(&forged))),
        },
    )
    .unwrap();
    assert!(has(&r, IssueKind::BadSignature), "{:#?}", r.issues);
}

/// `export-heads` sends the signed head to syslog and to a URL as well as to a file.
#[test]
fn export_heads_reaches_syslog_and_a_url() {
    let t = TempDir::new("heads-sinks");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(sample_log(&t));
    let head = std::fs::read_to_string(t.log().join("head.json")).unwrap();
    let socket = t.path().join("log.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // One HTTP request, answered 204; the body comes back through the channel.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/heads", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        std::io::Write::write_all(&mut conn, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        (request_line, String::from_utf8(body).unwrap())
    });
    cli::export_heads(&cli::ExportHeadsArgs {
        log: cli::LogLocation {
            config: None,
            dir: Some(t.log()),
        },
        to: vec![format!("syslog:{}", socket.display()), url],
        follow: None,
        key: Some(t.path().join("audit.key.pub")),
    })
    .unwrap();
    let (request_line, body) = server.join().unwrap();
    assert!(request_line.starts_with("POST /heads "), "{request_line}");
    let posted: SignedHead = serde_json::from_str(&body).unwrap();
    assert_eq!(posted, serde_json::from_str::<SignedHead>(&head).unwrap());
    let mut buf = vec![0; 4096];
    let n = syslog.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.starts_with("<85>airlock-audit[") && msg.contains(&format!("\"seq\":{}", posted.seq)),
        "{msg}"
    );
    // A head the key does not verify is not exported.
    let other = TempDir::new("heads-sinks-key");
    generate_key(&other.path().join("k"), false).unwrap();
    let err = cli::export_heads(&cli::ExportHeadsArgs {
        log: cli::LogLocation {
            config: None,
            dir: Some(t.log()),
        },
        to: vec![t.path().join("h").display().to_string()],
        follow: None,
        key: Some(other.path().join("k.pub")),
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("not signed by the log's key"),
        "{err}"
    );
}

/// The format-1 fixture (written by the recorder before formats were named) still verifies
/// and reads back, commands as the protocol-neutral command they were; a newer recorder
/// continues it, and the mixed log verifies.
#[tokio::test]
async fn format1_log_still_verifies_and_continues() {
    let t = TempDir::new("format1");
    format1_fixture(&t);
    let r = check_with_mac(&t);
    assert!(r.ok && r.issues.is_empty(), "{:#?}", r.issues);
    assert_eq!((r.records, r.sessions, r.formats.clone()), (20, 3, vec![1]));
    assert!(r.passes(true));

    let records = read_records(&t.log()).unwrap();
    let commands: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Command(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(commands.len(), 6);
    assert_eq!(
        commands[0].command,
        sql("SELECT id, email FROM customers").into_owned()
    );
    assert_eq!(
        (commands[0].facts.class, commands[0].facts.kinds.clone()),
        (Class::Read, vec!["select".into()])
    );
    assert_eq!(commands[3].command, Command::Connect);
    assert_eq!(commands[3].facts.class, Class::Admin);
    assert_eq!(commands[2].reason.as_deref(), Some("ddl is denied"));
    let approval = records
        .iter()
        .find_map(|r| match &r.event {
            Event::Approval(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (
            approval.n,
            approval.review.outcome,
            approval.review.decided_by.clone()
        ),
        (2, ApprovalOutcome::Approved, vec!["carol".to_owned()])
    );
    let (_, recs) = load_session(&t.log(), "e6b6a0fe-000001").unwrap();
    let mut out = Vec::new();
    cli::render_transcript(&recs, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for needle in [
        "#2 > UPDATE orders SET paid = true WHERE id = 7",
        "review (rule writes-need-dba)",
        "sql; write; update",
        "#2 approval 5f1c2a9e0b7d approved",
        "by carol",
        "deny (rule no-ddl): ddl is denied",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let found = search_sessions(
        &t.log(),
        &SessionQuery {
            text: Some("tcp connection".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].classes, vec![Class::Admin]);

    // A newer recorder continues the old log.
    let rec = open(&config(&t), &t);
    session(&rec, "carol", "demo-db", 1).await;
    rec.close().await.unwrap();
    let r = check_with_mac(&t);
    assert!(r.ok && r.issues.is_empty(), "{:#?}", r.issues);
    assert_eq!(r.formats, vec![1, FORMAT]);
}

/// `keygen --force` on the configured key of an existing log hands the log over (the old key
/// vouches for it, the new one signs its end); a key swapped by hand is refused at start.
#[tokio::test]
async fn keygen_force_hands_the_log_over_and_a_swapped_key_is_refused() {
    let t = TempDir::new("rotate");
    sample_log(&t).await;
    let config_file = t.path().join("airlock.yaml");
    std::fs::write(
        &config_file,
        format!(
            "daemon:\n  state_dir: {}\n  audit:\n    dir: {}\n",
            t.path().display(),
            t.log().display()
        ),
    )
    .unwrap();
    let old_public = public(&t);
    cli::keygen(&cli::KeygenArgs {
        log: cli::LogLocation {
            config: Some(config_file.clone()),
            dir: None,
        },
        out: None,
        force: true,
    })
    .unwrap();
    assert_ne!(public(&t), old_public);
    assert!(t.path().join("audit.key.old").exists());
    let r = check(&t);
    assert!(r.ok && r.passes(true), "{:#?}", r.issues);
    let rec = open(&config(&t), &t);
    session(&rec, "after", "demo-db", 1).await;
    rec.close().await.unwrap();
    let r = check_with_mac(&t);
    assert!(r.ok && r.passes(true), "{:#?}", r.issues);
    assert!(has(&r, IssueKind::KeyChanged));

    // A key replaced without a handover cannot vouch for the log: refused, nothing written.
    std::fs::remove_file(t.path().join("audit.key")).unwrap();
    generate_key(&t.path().join("audit.key"), false).unwrap();
    let before = dir_snapshot(&t);
    match Recorder::open(&config(&t), t.path()) {
        Err(AuditError::Corrupt { message, .. }) => {
            assert!(
                message.contains("not signed by this log's key"),
                "{message}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(dir_snapshot(&t), before);
}

/// The head written after each sync is not synced to the disk; a power loss can leave it
/// empty. The next start then has no head to trust and authenticates every record by its
/// MAC instead; a record without a valid one is still refused.
#[tokio::test]
async fn an_unreadable_head_is_survived_by_authenticating_every_record() {
    let t = TempDir::new("head-lost");
    sample_log(&t).await;
    std::fs::write(t.log().join("head.json"), b"").unwrap();
    let r = check(&t);
    assert!(!r.ok && has(&r, IssueKind::BadSignature), "{:#?}", r.issues);
    let rec = open(&config(&t), &t);
    rec.close().await.unwrap();
    let opens: Vec<_> = read_records(&t.log())
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Open(o) => o.unsigned_before,
            _ => None,
        })
        .collect();
    assert_eq!(
        opens,
        vec![25],
        "every earlier record was authenticated and adopted"
    );
    let r = check(&t);
    assert!(r.ok && r.passes(true), "{:#?}", r.issues);

    // Without a head, a forged record anywhere is caught by its MAC.
    forge_append(&t, None);
    std::fs::write(t.log().join("head.json"), b"").unwrap();
    assert!(matches!(
        Recorder::open(&config(&t), t.path()),
        Err(AuditError::Corrupt { .. })
    ));
}

/// An upgrade hand-over: the old daemon's recorder keeps recording the sessions it drains
/// while the new one records its own, into one chain, and the new one takes the log alone
/// once the old one has closed. Both use `fsync: batch`, so the switch has inline appends to
/// stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_recorders_share_one_chain_during_a_hand_over() {
    let t = TempDir::new("coop");
    let cfg = AuditConfig {
        fsync: FsyncPolicy::Batch,
        ..config(&t)
    };
    let old = open(&cfg, &t);
    // A session open across the hand-over, with records before and after it.
    let id = identity("draining");
    let mut long = old.admit_session().unwrap();
    long.start(start_of(&id)).await.unwrap();
    let decision = allow();
    let before = sql("SELECT 'before'");
    let (_, ack) = long.command(read_event(&before, &decision)).await.unwrap();
    ack.durable().await.unwrap();
    session(&old, "old-before", "demo-db", 3).await;

    old.share().await.unwrap();
    let new = Recorder::open_shared(&cfg, t.path()).unwrap();
    // Both write at once for a while.
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let rec = if i % 2 == 0 { old.clone() } else { new.clone() };
            tokio::spawn(async move {
                for j in 0..5 {
                    session(&rec, &format!("w{i}-{j}"), "demo-db", 4).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let after = sql("SELECT 'after'");
    let (_, ack) = long.command(read_event(&after, &decision)).await.unwrap();
    ack.durable().await.unwrap();
    long.end(SessionEnd {
        reason: EndReason::Shutdown,
        detail: None,
        bytes_from_client: 1,
        bytes_to_client: 2,
    })
    .await
    .unwrap();
    old.close().await.unwrap();
    new.unshare().await.unwrap();
    // Alone again: inline appends and the usual signing resume.
    session(&new, "new-after", "demo-db", 3).await;
    new.close().await.unwrap();

    let report = check(&t);
    assert!(report.ok, "{report:?}");
    assert!(report.issues.is_empty(), "{:?}", report.issues);
    assert_eq!(report.open_sessions, 0, "every session has its end record");
    // long + old-before + 20 writers' sessions + new-after.
    assert_eq!(report.sessions, 23);
    assert_eq!(report.unsigned_tail, 0, "the last head covers everything");
    assert_eq!(
        lines_with(&t, "\"type\":\"open\""),
        2,
        "one open record per daemon"
    );
}

/// Copies the format-1 fixture (log and key) into `t`; the key file as the daemon demands it
/// (git keeps it 0644).
fn format1_fixture(t: &TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/audit/testdata/format1");
    std::fs::create_dir_all(t.log()).unwrap();
    for name in ["audit.key", "audit.key.pub"] {
        std::fs::copy(fixture.join(name), t.path().join(name)).unwrap();
    }
    std::fs::set_permissions(
        t.path().join("audit.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for e in std::fs::read_dir(fixture.join("log")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), t.log().join(e.file_name())).unwrap();
    }
}

/// An upgrade hand-over starts the successor under the shared log's lock, with records past
/// the head that the live predecessor wrote since. From a format-1 predecessor (its head's
/// record has no MAC) a MAC-less tail is taken as its own, and the successor's heads cover it.
/// Behind a format-2 head, a MAC-less record is a forgery as in any start, and a MAC that
/// does not check is refused in both: the log is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_start_takes_only_a_format1_predecessors_macless_tail() {
    for (format1, mac) in [
        (true, None),
        (true, Some("ab".repeat(32))),
        (false, None),
        (false, Some("ab".repeat(32))),
    ] {
        let t = TempDir::new("coop-tail");
        let forged_seq = if format1 {
            format1_fixture(&t);
            20
        } else {
            sample_log(&t).await;
            25
        };
        forge_append(&t, mac.as_deref());
        // The shared start creates the lock file first; everything else stays as it was.
        let log_files = || {
            let mut files = dir_snapshot(&t);
            files.retain(|(p, _)| !p.ends_with(".lock"));
            files
        };
        let before = log_files();
        let opened = Recorder::open_shared(&config(&t), t.path());
        if format1 && mac.is_none() {
            let new = opened.expect("a format-1 predecessor's MAC-less tail is taken");
            new.unshare().await.unwrap();
            session(&new, "after-hand-over", "demo-db", 2).await;
            new.close().await.unwrap();
            let report = check_with_mac(&t);
            assert!(report.ok, "{:#?}", report.issues);
            assert!(report.passes(true), "{:#?}", report.issues);
            assert_eq!(report.unsigned_tail, 0, "the successor's head covers it");
            continue;
        }
        match opened {
            Err(AuditError::Corrupt { message, .. }) => assert!(
                message.contains(&format!("seq {forged_seq}")) && message.contains("MAC"),
                "format1 {format1}, mac {mac:?}: {message}"
            ),
            other => panic!("format1 {format1}, mac {mac:?}: expected a refusal, got {other:?}"),
        }
        assert!(log_files() == before, "a refused start changes nothing");
    }
}

/// While two daemons share the log, each follows the chain's tip the other left. A line
/// appended by someone without the key in that window is never chained onto: both writers'
/// next group fails (sessions fail closed), the line stays the tip, and verify (with the key)
/// and the next start name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_forged_during_a_hand_over_is_not_followed() {
    let t = TempDir::new("coop-forged");
    let cfg = config(&t);
    let old = open(&cfg, &t);
    session(&old, "old-before", "demo-db", 2).await;
    old.share().await.unwrap();
    let new = Recorder::open_shared(&cfg, t.path()).unwrap();
    session(&new, "new-before", "demo-db", 1).await;
    session(&old, "old-draining", "demo-db", 1).await;
    // Session ends are not waited for: have both written before the file is rewritten with
    // the forged line (the rewrite would race a concurrent append).
    new.flush().await.unwrap();
    old.flush().await.unwrap();
    let forged = forge_append(&t, None);
    let forged_seq = serde_json::from_str::<Record>(&forged).unwrap().seq;
    for rec in [&new, &old] {
        let id = identity("after-forgery");
        let Ok(mut s) = rec.admit_session() else {
            continue;
        };
        // The start is taken; the first command, awaited before it goes upstream, fails.
        s.start(start_of(&id)).await.unwrap();
        let decision = allow();
        let (_, ack) = s
            .command(read_event(&sql("SELECT 1 FROM orders"), &decision))
            .await
            .unwrap();
        let err = ack.durable().await.unwrap_err();
        assert!(err.to_string().contains("no valid MAC"), "{err}");
    }
    let seg = segments(&t).pop().unwrap();
    let mut lines = read_lines(&seg);
    assert_eq!(
        lines.last(),
        Some(&forged),
        "nothing was chained onto the forged line"
    );
    let r = check_with_mac(&t);
    assert!(
        !r.ok
            && r.issues
                .iter()
                .any(|i| i.kind == IssueKind::Unauthenticated && i.seq == Some(forged_seq)),
        "{:#?}",
        r.issues
    );
    assert!(matches!(
        Recorder::open(&cfg, t.path()),
        Err(AuditError::Corrupt { .. })
    ));
    // Once the forged line is cut off, both writers carry on (and stop cleanly).
    lines.pop();
    write_lines(&seg, &lines);
    old.close().await.unwrap();
    new.unshare().await.unwrap();
    new.close().await.unwrap();
}

/// The signing key authenticates every record: a key file another user can read (or write)
/// would let them extend (or rewrite) the chain. The daemon refuses it, and starts once the
/// file is private again.
#[tokio::test]
async fn a_signing_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new("key-mode");
    sample_log(&t).await;
    let key = t.path().join("audit.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "keygen writes it private"
    );
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let before = dir_snapshot(&t);
        match Recorder::open(&config(&t), t.path()) {
            Err(AuditError::Key { message, .. }) => assert!(
                message.contains(&format!("mode {mode:04o}")) && message.contains("chmod 600"),
                "{message}"
            ),
            other => panic!("mode {mode:o}: expected a refusal, got {other:?}"),
        }
        assert_eq!(dir_snapshot(&t), before);
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    // Private, but another user's: they could read or replace it.
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::os::unix::fs::chown(&key, Some(me + 1), None).unwrap();
    match Recorder::open(&config(&t), t.path()) {
        Err(AuditError::Key { message, .. }) => assert!(
            message.contains(&format!("belongs to uid {}", me + 1)),
            "{message}"
        ),
        other => panic!("another user's key: expected a refusal, got {other:?}"),
    }
    std::os::unix::fs::chown(&key, Some(me), None).unwrap();
    open(&config(&t), &t).close().await.unwrap();
    assert!(check(&t).passes(true));
}

/// Relatives of the forged append: the forged records in a segment file of their own (as if
/// the log had rotated), led by a forged `open` that claims format 1 so that their missing
/// MACs look legitimate. With the key, verify names them as unauthenticated (a log does not
/// go back to lines without MACs behind its head), `--strict` fails without it, and a start
/// refuses.
#[tokio::test]
async fn a_forged_segment_claiming_format_1_is_refused() {
    let t = TempDir::new("forged-segment");
    sample_log(&t).await;
    let seg = segments(&t).pop().unwrap();
    let lines = read_lines(&seg);
    let last = lines.last().unwrap();
    let tip: Record = serde_json::from_str(last).unwrap();
    let open = Record {
        seq: tip.seq + 1,
        ts: tip.ts + 1,
        prev: ChainHash::of_line(last.as_bytes()),
        session: None,
        sprev: None,
        event: Event::Open(OpenEvent {
            format: 1,
            version: "0.0.9".into(),
            public_key: to_hex_public(&t),
            torn: None,
            unsigned_before: None,
        }),
        mac: None,
    };
    // Format 1 had no `format` member.
    let open_line = serde_json::to_string(&open)
        .unwrap()
        .replace(",\"format\":1", "");
    let new_seg = t.log().join(super::writer::segment_name(open.seq));
    write_lines(&new_seg, std::slice::from_ref(&open_line));
    let forged = forge_append(&t, None);
    assert!(forged.contains("GRANT ALL"));
    assert_eq!(segments(&t).len(), 2, "{:?}", segments(&t));

    let r = check(&t);
    assert!(r.ok && !r.passes(true), "{:#?}", r.issues);
    assert_eq!(r.unsigned_tail, 2);
    let r = check_with_mac(&t);
    let flagged: Vec<_> = r
        .issues
        .iter()
        .filter(|i| i.kind == IssueKind::Unauthenticated)
        .map(|i| i.seq)
        .collect();
    assert!(!r.ok, "{:#?}", r.issues);
    assert_eq!(flagged, vec![Some(25), Some(26)], "{:#?}", r.issues);
    let before = dir_snapshot(&t);
    match Recorder::open(&config(&t), t.path()) {
        Err(AuditError::Corrupt { message, .. }) => {
            assert!(
                message.contains("seq 25") && message.contains("no MAC"),
                "{message}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        dir_snapshot(&t) == before,
        "a refused start changes nothing"
    );
}

fn to_hex_public(t: &TempDir) -> String {
    super::record::to_hex(public(t).as_bytes())
}

/// Cutting the log mid-line inside what the signed head covers looks like a crash's torn
/// tail, but it is not one: verify reports it truncated, and a start refuses it (it would
/// otherwise cut the fragment off and carry on).
#[tokio::test]
async fn a_signed_record_cut_mid_line_is_truncation_not_a_torn_tail() {
    let t = TempDir::new("cut-mid-line");
    sample_log(&t).await;
    let seg = segments(&t).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let r = check(&t);
    assert!(
        !r.ok && has(&r, IssueKind::Truncated) && has(&r, IssueKind::TornTail),
        "{:#?}",
        r.issues
    );
    let before = dir_snapshot(&t);
    match Recorder::open(&config(&t), t.path()) {
        Err(AuditError::Corrupt { message, .. }) => {
            assert!(message.contains("cut off"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        dir_snapshot(&t) == before,
        "a refused start changes nothing"
    );
}

#[tokio::test]
async fn recorded_bodies_verify_read_back_and_show_escaped() {
    let t = TempDir::new("bodies");
    let rec = open(&config(&t), &t);
    let id = identity("alice");
    let mut s = rec.admit_session().unwrap();
    s.start(SessionStart {
        proxy_session: Some(1),
        identity: &id,
        workload: None,
        target: "api",
        protocol: Protocol::Http,
        client: None,
        original_dst: None,
        tls: None,
    })
    .await
    .unwrap();
    let decision = allow();
    let (n, ack) = s
        .command(read_event(&sql("SELECT 1"), &decision))
        .await
        .unwrap();
    ack.durable().await.unwrap();
    let request = BodyRecord {
        text: r#"{"email":"[REDACTED]"}"#.into(),
        truncated: false,
        bytes: 27,
    };
    let answer = BodyRecord {
        text: "ok\u{1b}[2J".into(),
        truncated: true,
        bytes: 1 << 20,
    };
    s.result(
        n,
        CommandResult {
            bytes: 9,
            status: Some(200),
            request_body: Some(request.clone()),
            answer_body: Some(answer.clone()),
            ..CommandResult::default()
        },
    )
    .await
    .unwrap()
    .durable()
    .await
    .unwrap();
    let sid = s.id().to_owned();
    s.end(SessionEnd {
        reason: EndReason::ClientClosed,
        detail: None,
        bytes_from_client: 27,
        bytes_to_client: 9,
    })
    .await
    .unwrap();
    rec.close().await.unwrap();
    assert!(check(&t).ok, "{:?}", check(&t).issues);

    let (_, recs) = load_session(&t.log(), &sid).unwrap();
    let result = recs
        .iter()
        .find_map(|r| match &r.event {
            Event::Result(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(result.request_body, Some(request));
    assert_eq!(result.answer_body, Some(answer));
    let mut out = Vec::new();
    cli::render_transcript(&recs, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(r#"request body, 27 bytes: "{\"email\":\"[REDACTED]\"}""#),
        "{text}"
    );
    assert!(
        text.contains(r#"answer body, 1048576 bytes, truncated: "ok\u{1b}[2J""#),
        "control bytes escaped: {text}"
    );

    // A result written before bodies existed still parses.
    let old: ResultRecord =
        serde_json::from_str(r#"{"n":1,"bytes":3,"duration_us":5,"status":200}"#).unwrap();
    assert_eq!((old.request_body, old.answer_body), (None, None));
}
