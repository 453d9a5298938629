//! Recorder throughput: acknowledged command records per second with `fsync: always` and
//! `fsync: batch`, one session alone and 16 sessions at once (group commit), against a
//! disabled recorder as the baseline. `wait`: each command waits for its acknowledgement
//! before the next (strict write-ahead, latency-bound). `pipelined`: commands are queued and
//! their acknowledgements awaited at the end (what overlapping with the upstream round trip
//! approaches; bound by the writer's throughput). Run with
//! `cargo bench -p airlock --bench audit`; the log goes under target/bench-audit (set
//! AIRLOCK_BENCH_DIR to measure another disk, AIRLOCK_BENCH_HEAD_INTERVAL_MS to sign heads
//! less often than after every sync).
//!
//! `audit_line`: the per-record hashing of a format-2 command line: the SHA-256 of the chain
//! (there before format 2) and the HMAC-SHA256 that format 2 adds.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock::audit::{CommandEvent, Recorder, SessionStart};
use airlock::config::audit::{AuditConfig, FsyncPolicy};
use airlock::model::{Class, Command, Decision, Dialect, Facts, Identity, Protocol};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    // Under target/ rather than /tmp: /tmp may be tmpfs, where fsync costs nothing.
    let base = std::env::var_os("AIRLOCK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-audit"));
    let p = base.join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// Runs `iters` commands spread over `sessions` concurrent sessions; returns the wall time.
async fn run(rec: &Recorder, sessions: u64, iters: u64, pipelined: bool) -> Duration {
    let identity = Identity {
        subject: "bench".into(),
        groups: vec!["agents".into()],
        workload: None,
        token: None,
    };
    let mut recorders = Vec::new();
    for _ in 0..sessions {
        let mut s = rec.admit_session().unwrap();
        s.start(SessionStart {
            proxy_session: None,
            identity: &identity,
            workload: None,
            target: "demo-db",
            protocol: Protocol::Postgres,
            client: None,
            original_dst: None,
            tls: None,
        })
        .await
        .unwrap();
        recorders.push(s);
    }
    let per = iters.div_ceil(sessions);
    let start = Instant::now();
    let tasks: Vec<_> = recorders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let decision = Decision::Allow {
                    rule: "agents-read".into(),
                    mask: vec![],
                    run_as: None,
                };
                // What classification finds in pgbench -S's statement.
                let facts = Facts {
                    tables_read: vec!["pgbench_accounts".into()],
                    ..Facts::single("select", Class::Read)
                };
                let mut pending = Vec::new();
                for i in 0..per {
                    let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}");
                    let (_, ack) = s
                        .command(CommandEvent {
                            command: &Command::sql(Dialect::Postgres, &text),
                            facts: &facts,
                            decision: &decision,
                            approval: None,
                            caller: None,
                        })
                        .await
                        .unwrap();
                    if pipelined {
                        pending.push(ack);
                    } else {
                        ack.durable().await.unwrap();
                    }
                }
                for ack in pending {
                    ack.durable().await.unwrap();
                }
                s
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    drop(done);
    elapsed
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("audit_command_record");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));

    let off = Recorder::disabled();
    for sessions in [1u64, 16] {
        g.bench_function(format!("off/wait/{sessions}_sessions"), |b| {
            b.iter_custom(|iters| rt.block_on(run(&off, sessions, iters, false)))
        });
    }
    for (name, fsync) in [
        ("always", FsyncPolicy::Always),
        ("batch", FsyncPolicy::Batch),
    ] {
        let dir = temp_dir(name);
        let head_interval = std::env::var("AIRLOCK_BENCH_HEAD_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(AuditConfig::default().head_interval, Duration::from_millis);
        let cfg = AuditConfig {
            dir: Some(dir.0.join("log")),
            signing_key: Some(dir.0.join("audit.key")),
            fsync,
            min_free_bytes: 0,
            head_interval,
            ..AuditConfig::default()
        };
        let rec = Recorder::open(&cfg, &dir.0).unwrap();
        for (mode, pipelined) in [("wait", false), ("pipelined", true)] {
            for sessions in [1u64, 16] {
                g.bench_function(format!("{name}/{mode}/{sessions}_sessions"), |b| {
                    b.iter_custom(|iters| rt.block_on(run(&rec, sessions, iters, pipelined)))
                });
            }
        }
        rt.block_on(rec.close()).unwrap();
    }
    g.finish();
}

/// A format-2 command record of pgbench -S as the writer encodes it, without its MAC.
const LINE: &str = r#"{"seq":123456,"ts":1796406168584855,"prev":"ca544b8b33e3f598fedafbf62a31746006c5ea48d3382b5bb2c30d58b9d277b9","session":"e6b6a0fe-000001","sprev":"1984d58824bdb5c89825191dca4f25a5cb1122c13fbe87898cc1cef8b2734ba5","event":{"type":"command","n":4711,"command":{"kind":"sql","dialect":"postgres","text":"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"},"facts":{"class":"read","classes":["read"],"kinds":["select"],"tables_read":["pgbench_accounts"]},"action":"allow","rule":"agents-read"}}"#;

fn line_hashes(c: &mut Criterion) {
    use sha2::Digest;
    let mut g = c.benchmark_group("audit_line");
    g.throughput(Throughput::Elements(1));
    // Format 1: the chain's SHA-256 of the line.
    g.bench_function("sha256_chain", |b| {
        b.iter(|| sha2::Sha256::digest(std::hint::black_box(LINE.as_bytes())))
    });
    // Format 2: the MAC and the chain hash of the sealed line, in one pass.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let mut buf = Vec::with_capacity(1024);
    g.bench_function("seal_mac_and_chain", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(LINE.as_bytes());
            airlock::audit::seal(&key, &mut buf, 0)
        })
    });
    // What a second pass would cost instead: the HMAC-SHA256 of the whole line.
    g.bench_function("hmac_sha256_line", |b| {
        b.iter(|| ring::hmac::sign(&key, std::hint::black_box(LINE.as_bytes())))
    });
    g.finish();
}

criterion_group!(benches, line_hashes, bench);
criterion_main!(benches);
