//! Masking throughput on realistic rows: a `customers` table (id, name, email, phone, card,
//! notes with occasional secrets), as text-format DataRow bodies. Reports MB/s of DataRow
//! input. Also compares detection engines on the same values (hand-written scanner vs a regex
//! RegexSet + combined regex, and an aho-corasick literal pass alone); see
//! docs/decisions/masking-engine.md.
//!
//! Run: `cargo bench -p airlock --bench mask`.

use std::hint::black_box;

use airlock::config::policy::{Detector, MaskRuleSpec, MaskStyle};
use airlock::mask::{ColumnPlan, ColumnRef, Masker, ValueFormat};
use airlock::protocol::postgres::rows::PgRows;
use airlock::protocol::postgres::types::{oid, value_kind};
use bytes::{BufMut, BytesMut};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// CPU time of the benchmarking thread. The machine is shared (a load average of 10 on 2 cores
/// is common while others compile), so wall time would measure the scheduler; thread CPU time
/// gives throughput per core.
struct ThreadCpuTime(WallTime);

fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = std::time::Duration;
    type Value = std::time::Duration;
    fn start(&self) -> Self::Intermediate {
        thread_cpu()
    }
    fn end(&self, i: Self::Intermediate) -> Self::Value {
        thread_cpu() - i
    }
    fn add(&self, v1: &Self::Value, v2: &Self::Value) -> Self::Value {
        *v1 + *v2
    }
    fn zero(&self) -> Self::Value {
        std::time::Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

const ROWS: usize = 20_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

const FIRST: &[&str] = &[
    "Alice", "Bob", "Carol", "David", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
    "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoë",
];
const LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodríguez",
    "Martinez",
    "Hernández",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "O'Neil",
    "Müller",
    "Taylor",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp.example.net",
    "example.co.uk",
];
const WORDS: &[&str] = &[
    "the",
    "customer",
    "asked",
    "about",
    "their",
    "invoice",
    "and",
    "prefers",
    "delivery",
    "in",
    "the",
    "morning",
    "called",
    "support",
    "twice",
    "regarding",
    "a",
    "refund",
    "for",
    "order",
    "shipped",
    "late",
    "to",
    "new",
    "address",
    "please",
    "follow",
    "up",
    "next",
    "week",
    "VIP",
    "account",
    "since",
    "2019",
    "loyalty",
    "tier",
    "gold",
    "discount",
    "applied",
    "on",
    "renewal",
    "contract",
    "#4471",
    "ticket",
    "closed",
    "by",
    "agent",
    "notes:",
    "escalated",
    "(urgent)",
];
const SECRETS: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "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",
    "backup contact jane.roe@example.org",
    "server 10.20.30.40",
    "ssn 123-45-6789",
    "card 4111 1111 1111 1111",
];

fn card(rng: &mut Rng) -> String {
    let mut d: Vec<u8> = vec![4];
    for _ in 0..14 {
        d.push(rng.below(10) as u8);
    }
    // Luhn check digit.
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &x)| {
            let x = u32::from(x);
            if k % 2 == 0 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    d.push(((10 - sum % 10) % 10) as u8);
    d.iter().map(|x| char::from(b'0' + x)).collect()
}

/// One customers row: id, name, email, phone, card, notes.
fn row(rng: &mut Rng, id: usize) -> Vec<String> {
    let first = rng.pick(FIRST);
    let last = rng.pick(LAST);
    let email = format!(
        "{}.{}{}@{}",
        first.to_lowercase(),
        last.to_lowercase().replace('\'', ""),
        rng.below(100),
        rng.pick(DOMAINS)
    );
    let phone = format!(
        "({}) {}-{:04}",
        200 + rng.below(800),
        200 + rng.below(800),
        rng.below(10000)
    );
    let mut notes = String::new();
    let words = 8 + rng.below(40);
    for k in 0..words {
        if k > 0 {
            notes.push(' ');
        }
        notes.push_str(rng.pick(WORDS));
    }
    if rng.below(20) == 0 {
        notes.push(' ');
        notes.push_str(rng.pick(SECRETS));
    }
    vec![
        id.to_string(),
        format!("{first} {last}"),
        email,
        phone,
        card(rng),
        notes,
    ]
}

fn data_row(values: &[String]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        b.put_i32(v.len() as i32);
        b.put_slice(v.as_bytes());
    }
    b.to_vec()
}

fn columns() -> Vec<ColumnRef<'static>> {
    let c = |column, type_oid| ColumnRef {
        schema: "public",
        table: "customers",
        column,
        kind: value_kind(type_oid),
        type_id: type_oid,
        format: ValueFormat::Text,
    };
    vec![
        c("id", oid::INT4),
        c("name", oid::TEXT),
        c("email", oid::TEXT),
        c("phone", oid::TEXT),
        c("card", oid::TEXT),
        c("notes", oid::TEXT),
    ]
}

fn spec(name: &str, columns: &[&str], detectors: &[Detector], style: MaskStyle) -> MaskRuleSpec {
    MaskRuleSpec {
        name: name.into(),
        columns: columns.iter().map(|s| s.to_string()).collect(),
        json_paths: Vec::new(),
        detectors: detectors.to_vec(),
        style,
        except_groups: vec![],
        computed: Default::default(),
        compared: Default::default(),
    }
}

const ALL: [Detector; 11] = [
    Detector::Email,
    Detector::Card,
    Detector::Iban,
    Detector::Ssn,
    Detector::Phone,
    Detector::Ip,
    Detector::AwsKey,
    Detector::CloudKey,
    Detector::Jwt,
    Detector::PrivateKey,
    Detector::HighEntropy,
];

fn masker() -> Masker {
    Masker::new(
        &[
            spec("email", &["customers.email"], &[], MaskStyle::Partial),
            spec("phone", &["customers.phone"], &[], MaskStyle::Hash),
            spec("card", &["customers.card"], &[], MaskStyle::Redact),
            spec("secrets", &[], &ALL, MaskStyle::Redact),
        ],
        b"bench-key-0123456789abcdef",
    )
    .expect("masker")
}

fn plan(m: &Masker, active: &[&str]) -> ColumnPlan {
    let active: Vec<String> = active.iter().map(|s| s.to_string()).collect();
    m.plan(&columns(), &active).expect("plan")
}

/// A RegexSet/regex engine equivalent in coverage, finding candidates only (no validators):
/// a lower bound on what a regex-based engine would cost.
struct RegexEngine {
    set: regex::bytes::RegexSet,
    all: regex::bytes::Regex,
}

const PATTERNS: &[&str] = &[
    r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"\b(?:\d[ -]?){12,18}\d\b",
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    r"\b\d{3}[- ]\d{2}[- ]\d{4}\b",
    r"(?:\+\d[\d .()-]{7,18}\d|\(\d{3}\) ?\d{3}[ .-]\d{4}\b|\b\d{3}[ .-]\d{3}[ .-]\d{4}\b)",
    r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
    r"(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}|::[0-9A-Fa-f]{1,4}",
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}\b",
    r"\b[A-Za-z0-9/+]{40}\b",
    r"AIza[0-9A-Za-z_-]{35}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}|xox[abprse]-[A-Za-z0-9-]{10,}|(?:AccountKey|SharedAccessKey|sig)=[A-Za-z0-9+/=%]{40,}",
    r"eyJ[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"[A-Za-z0-9+/_-]{20,}",
];

impl RegexEngine {
    /// `ascii`: ASCII-only classes and word boundaries (`(?-u)`), which keeps the regex crate
    /// on its lazy DFA for non-ASCII input too; a fair best case for regex.
    fn new(ascii: bool) -> Self {
        let prefix = if ascii { "(?-u)" } else { "" };
        let patterns: Vec<String> = PATTERNS.iter().map(|p| format!("{prefix}{p}")).collect();
        Self {
            set: regex::bytes::RegexSet::new(&patterns).expect("set"),
            all: regex::bytes::Regex::new(&format!("{prefix}{}", PATTERNS.join("|")))
                .expect("regex"),
        }
    }
    fn candidates(&self, v: &[u8]) -> usize {
        if !self.set.is_match(v) {
            return 0;
        }
        self.all.find_iter(v).count()
    }
}

fn bench(c: &mut Criterion<ThreadCpuTime>) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let rows: Vec<Vec<String>> = (0..ROWS).map(|i| row(&mut rng, i + 1)).collect();
    let bodies: Vec<Vec<u8>> = rows.iter().map(|r| data_row(r)).collect();
    let bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    let m = masker();

    let mut g = c.benchmark_group("datarow");
    g.throughput(Throughput::Bytes(bytes));
    for (name, active) in [
        ("passthrough", &[][..]),
        ("columns", &["email", "phone", "card"][..]),
        ("detectors", &["secrets"][..]),
        (
            "columns+detectors",
            &["email", "phone", "card", "secrets"][..],
        ),
    ] {
        let mut p = plan(&m, active);
        let mut out = BytesMut::with_capacity(1 << 16);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut rewritten = 0usize;
                for body in &bodies {
                    out.clear();
                    let r = p.mask_data_row(body, &mut out).expect("row");
                    rewritten += usize::from(r.rewritten);
                }
                black_box(rewritten)
            })
        });
    }
    g.finish();

    // Engine comparison over the same text values (all columns but id), detection only.
    let values: Vec<&[u8]> = rows
        .iter()
        .flat_map(|r| r[1..].iter().map(|s| s.as_bytes()))
        .collect();
    let vbytes: u64 = values.iter().map(|v| v.len() as u64).sum();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Bytes(vbytes));
    let mut p = plan(&m, &["secrets"]);
    let mut out = BytesMut::with_capacity(1 << 12);
    g.bench_function("handwritten_scan", |b| {
        b.iter(|| {
            let mut changed = 0usize;
            for v in &values {
                out.clear();
                changed += usize::from(!matches!(
                    p.mask_value(1, v, &mut out).expect("mask"),
                    airlock::mask::MaskOutcome::Unchanged
                ));
            }
            black_box(changed)
        })
    });
    for (name, ascii) in [
        ("regexset_candidates", false),
        ("regexset_candidates_ascii", true),
    ] {
        let re = RegexEngine::new(ascii);
        g.bench_function(name, |b| {
            b.iter(|| black_box(values.iter().map(|v| re.candidates(v)).sum::<usize>()))
        });
    }
    let ac = aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build([
            "@",
            "AKIA",
            "ASIA",
            "AIza",
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "github_pat_",
            "xox",
            "eyJ",
            "-----BEGIN",
            "AccountKey=",
            "SharedAccessKey=",
            "sig=",
        ])
        .expect("ac");
    g.bench_function("aho_corasick_literals_only", |b| {
        b.iter(|| {
            black_box(
                values
                    .iter()
                    .map(|v| ac.find_iter(v).count())
                    .sum::<usize>(),
            )
        })
    });
    g.finish();
}

/// A JSON answer like an HTTP API's: an array of user records with emails, card numbers,
/// tokens, free text, numbers and a nested object (about 8 MiB).
fn json_document(rng: &mut Rng) -> Vec<u8> {
    let mut doc = b"[".to_vec();
    let mut i = 0;
    while doc.len() < 8 << 20 {
        if i > 0 {
            doc.push(b',');
        }
        let token: String = (0..36)
            .map(|_| {
                let c = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                c[rng.below(c.len())] as char
            })
            .collect();
        doc.extend_from_slice(
            format!(
                r#"{{"id":{i},"name":"user {i}","email":"user{i}@example.com","card":"{}","token":"ghp_{token}","note":"{}","active":true,"score":{}.5,"address":{{"city":"Lyon","zip":"69001"}}}}"#,
                card(rng),
                rng.pick(&["first order", "called support about the invoice", "prefers email", ""]),
                rng.below(1000)
            )
            .as_bytes(),
        );
        i += 1;
    }
    doc.push(b']');
    doc
}

/// Masked JSON throughput (budget: 300 MB/s per core), fed in 64 KiB chunks as the http
/// handler receives them.
fn bench_json(c: &mut Criterion<ThreadCpuTime>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let doc = json_document(&mut rng);
    let specs = vec![
        MaskRuleSpec {
            name: "emails".into(),
            columns: Vec::new(),
            json_paths: vec!["$[*].email".into()],
            detectors: Vec::new(),
            style: MaskStyle::Redact,
            except_groups: Vec::new(),
            computed: Default::default(),
            compared: Default::default(),
        },
        MaskRuleSpec {
            name: "pii".into(),
            columns: Vec::new(),
            json_paths: Vec::new(),
            detectors: vec![Detector::Email, Detector::Card, Detector::CloudKey],
            style: MaskStyle::Redact,
            except_groups: Vec::new(),
            computed: Default::default(),
            compared: Default::default(),
        },
    ];
    let m = Masker::new(&specs, &[7u8; 32]).expect("masker");
    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Bytes(doc.len() as u64));
    for (name, active) in [
        ("path", &["emails"][..]),
        ("detectors", &["pii"][..]),
        ("path+detectors", &["emails", "pii"][..]),
    ] {
        let active: Vec<String> = active.iter().map(|s| (*s).to_owned()).collect();
        let mut out = BytesMut::with_capacity(1 << 17);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut jm = m.json(&active).expect("json masker");
                let mut total = 0usize;
                for chunk in doc.chunks(64 * 1024) {
                    jm.feed(chunk, &mut out).expect("feed");
                    total += out.len();
                    out.clear();
                }
                jm.finish(&mut out).expect("finish");
                black_box(total + out.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime(WallTime)).sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = bench, bench_json
}
criterion_main!(benches);
