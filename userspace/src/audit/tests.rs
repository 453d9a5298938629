//! Tests with real files in temp dirs and, for the crash, a real child process killed with
//! SIGKILL.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::writer::list_segments;
use super::*;
use crate::config::Protocol;
use crate::identity::{Identity, Workload};
use crate::policy::Decision;

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
        let (n, ack) = s
            .command(CommandEvent {
                text: &text,
                classes: vec![Cow::Borrowed("read")],
                kind: Some(Cow::Borrowed("select")),
                decision: &decision,
                approval: None,
            })
            .await
            .unwrap();
        ack.durable().await.unwrap();
        s.result(
            n,
            CommandResult {
                rows: Some(1),
                bytes: 42,
                duration: Duration::from_micros(300),
                error: None,
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

/// An allowed read with no statement kind, as the gateway records one.
fn read_event<'a>(text: &'a str, decision: &'a Decision) -> CommandEvent<'a> {
    CommandEvent {
        text,
        classes: vec!["read".into()],
        kind: None,
        decision,
        approval: None,
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
        on_timeout: crate::policy::OnTimeout::Deny,
        escalate_to: Vec::new(),
        mode: crate::policy::ReviewMode::Hold,
        mask: Vec::new(),
    };
    let (n, ack) = s
        .command(CommandEvent {
            text: "UPDATE orders SET paid = true",
            classes: vec!["write".into()],
            kind: Some("update".into()),
            decision: &review,
            approval: None,
        })
        .await
        .unwrap();
    ack.durable().await.unwrap();
    s.approval(
        n,
        Approval {
            id: "req-1".into(),
            outcome: ApprovalOutcome::Approved,
            approvers: vec!["carol".into()],
        },
    )
    .await
    .unwrap()
    .durable()
    .await
    .unwrap();
    s.result(
        n,
        CommandResult {
            rows: Some(3),
            bytes: 15,
            duration: Duration::from_millis(2),
            error: None,
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
            text: "DROP TABLE orders",
            classes: vec!["ddl".into()],
            kind: None,
            decision: &deny,
            approval: None,
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
    assert!(text.contains("approval req-1 Approved by carol"), "{text}");
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
        if let Event::Command(c) = &mut rec.event {
            c.text = c.text.replace(
                "SELECT 2 FROM orders /* bob",
                "SELECT 2 FROM salaries /* bob",
            );
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
    // A restart applies retention: every segment older than a second goes.
    let cfg = AuditConfig {
        retention: RetentionConfig {
            max_age: Some(Duration::from_secs(1)),
            max_bytes: None,
        },
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
        .command(CommandEvent {
            text: "SELECT id, email FROM customers",
            classes: vec!["read".into()],
            kind: Some("select".into()),
            decision: &allow(),
            approval: None,
        })
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
        err = match s.command(read_event(&text, &decision)).await {
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
    let (n, ack) = a.command(read_event("SELECT 1", &allow())).await.unwrap();
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
    let (_, ack) = b.command(read_event("SELECT 2", &allow())).await.unwrap();
    let err = ack.durable().await.expect_err("the disk is full");
    assert!(matches!(err, AuditError::StorageFull(_)), "{err}");
    std::fs::remove_file(&filler).unwrap();
    // Room again, but alice's result is gone: her next command must not be answered.
    let next = match a.command(read_event("SELECT 3", &allow())).await {
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
                let (n, ack) = s.command(read_event(&text, &decision)).await.unwrap();
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
            let (_, ack) = s.command(read_event(&text, &allow())).await.unwrap();
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
        .command(read_event("SELECT 'first'", &allow()))
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
        .command(read_event("SELECT 'second'", &allow()))
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
        let (n, ack) = s.command(read_event(&text, &allow())).await.unwrap();
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
        let (n, ack) = s.command(read_event(&text, &decision)).await.unwrap();
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
    })
    .unwrap();
    assert!(
        cli::replay(&cli::ReplayArgs {
            log: log.clone(),
            session: "nope".into(),
            json: false
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
                    let (_, ack) = s.command(read_event(&text, &decision)).await.unwrap();
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
            Event::Command(c) => Some(c.text),
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
