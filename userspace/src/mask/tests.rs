//! Unit tests of the masking engine: detectors (positives and near misses), styles, plans, and a
//! randomized check that raw values never come out. PostgreSQL's types and row framing are
//! tested with them in `protocol/postgres/rows_tests.rs`.

use bytes::BytesMut;

use super::detect::{self, DetectorSet, Match};
use super::*;
use crate::config::policy::{Detector, MaskRuleSpec, MaskStyle};

pub(crate) const KEY: &[u8] = b"0123456789abcdef-test-key";

pub(crate) fn rule(
    name: &str,
    columns: &[&str],
    detectors: &[Detector],
    style: MaskStyle,
) -> MaskRuleSpec {
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

/// Every detector, in order.
pub(crate) fn all_detectors() -> impl Iterator<Item = Detector> {
    detect::ALL_DETECTORS.into_iter()
}

fn all_detector_set() -> DetectorSet {
    let mut s = DetectorSet::default();
    for d in detect::ALL_DETECTORS {
        s.insert(d);
    }
    s
}

/// The spans the full detector set finds in `s`.
fn found(s: &str) -> Vec<(String, Detector)> {
    found_with(all_detector_set(), s)
}

fn found_with(set: DetectorSet, s: &str) -> Vec<(String, Detector)> {
    let mut out: Vec<Match> = Vec::new();
    detect::scan(s.as_bytes(), set, &mut out);
    out.iter()
        .map(|m| (s[m.start..m.end].to_string(), m.detector))
        .collect()
}

fn only(d: Detector) -> DetectorSet {
    let mut s = DetectorSet::default();
    s.insert(d);
    s
}

#[track_caller]
fn assert_finds(d: Detector, text: &str, span: &str) {
    let got = found(text);
    assert!(
        got.iter().any(|(s, det)| s == span && *det == d),
        "{d:?} should find {span:?} in {text:?}; found {got:?}"
    );
}

#[track_caller]
fn assert_none(text: &str) {
    let got = found(text);
    assert!(
        got.is_empty(),
        "nothing should match in {text:?}; found {got:?}"
    );
}

#[track_caller]
fn assert_not(d: Detector, text: &str) {
    let got = found(text);
    assert!(
        !got.iter().any(|(_, det)| *det == d),
        "{d:?} should not match in {text:?}; found {got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// detectors

#[test]
fn email_positives_and_near_misses() {
    assert_finds(
        Detector::Email,
        "mail john.doe+tag@example.co.uk now",
        "john.doe+tag@example.co.uk",
    );
    assert_finds(Detector::Email, "Contact: a_b@x.io.", "a_b@x.io");
    assert_finds(Detector::Email, "<alice@example.com>", "alice@example.com");
    assert_finds(
        Detector::Email,
        "alice@mail-1.example.org",
        "alice@mail-1.example.org",
    );
    assert_none("@foo.com");
    assert_none("john@localhost");
    assert_none("a@b.c");
    assert_none("user@ex..com");
    assert_none("price @ 5.00");
    assert_none("twitter @handle");
}

#[test]
fn card_numbers_are_luhn_checked() {
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "378282246310005",
        "5555555555554444",
        "6011111111111117",
        "2223003122003222",
    ] {
        assert_finds(Detector::Card, &format!("card {card}, thanks"), card);
    }
    // Luhn failures, wrong issuer digit, mixed separators, too long, glued to letters.
    assert_none("card 4111111111111112");
    assert_none("card 4111 1111 1111 1112");
    assert_none("id 1234567812345670");
    assert_not(Detector::Card, "4111 1111-1111 1111");
    assert_none("n 41111111111111111111111");
    assert_none("x4111111111111111");
    assert_none("4111111111111111abc");
}

#[test]
fn iban_mod97() {
    assert_finds(
        Detector::Iban,
        "pay to GB82 WEST 1234 5698 7654 32 today",
        "GB82 WEST 1234 5698 7654 32",
    );
    assert_finds(
        Detector::Iban,
        "DE89370400440532013000",
        "DE89370400440532013000",
    );
    assert_finds(
        Detector::Iban,
        "iban: DE89 3704 0044 0532 0130 00.",
        "DE89 3704 0044 0532 0130 00",
    );
    assert_finds(
        Detector::Iban,
        "FR1420041010050500013M02606",
        "FR1420041010050500013M02606",
    );
    assert_none("pay to GB83 WEST 1234 5698 7654 32 today");
    assert_none("DE89370400440532013001");
    assert_none("DE89");
}

#[test]
fn ssn_rules() {
    assert_finds(Detector::Ssn, "ssn 123-45-6789.", "123-45-6789");
    assert_finds(Detector::Ssn, "ssn 078 05 1120", "078 05 1120");
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-6789",
        "123-45-0000",
        "123-45-67890",
        "123-45-6789-1",
    ] {
        assert_not(Detector::Ssn, bad);
    }
}

#[test]
fn phone_shapes() {
    for p in [
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "+1 415 555 2671",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "1-800-555-0199",
        "+14155552671",
    ] {
        assert_finds(Detector::Phone, &format!("call {p} today"), p);
    }
    for bad in [
        "2024-01-15",
        "555-1234",
        "+12",
        "4155552671",
        "12:30",
        "555-123-45678",
    ] {
        assert_not(Detector::Phone, &format!("x {bad} y"));
    }
}

#[test]
fn ip_addresses() {
    for ip in [
        "192.168.1.10",
        "10.0.0.1/8",
        "8.8.8.8",
        "2001:db8::1",
        "fe80::1ff:fe23:4567:890a",
        "::1",
        "::ffff:192.0.2.1",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    ] {
        assert_finds(Detector::Ip, &format!("from {ip}, ok"), ip);
    }
    for bad in [
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "at 10:30:45",
        "std::vector",
        "01.02.03.04",
        "Foo::bar",
    ] {
        assert_not(Detector::Ip, &format!("x {bad} y"));
    }
}

#[test]
fn aws_keys() {
    assert_finds(
        Detector::AwsKey,
        "key=AKIAIOSFODNN7EXAMPLE;",
        "AKIAIOSFODNN7EXAMPLE",
    );
    assert_finds(
        Detector::AwsKey,
        "ASIAY34FZKBOKMUTVV7A",
        "ASIAY34FZKBOKMUTVV7A",
    );
    assert_finds(
        Detector::AwsKey,
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    );
    assert_not(Detector::AwsKey, "AKIAIOSFODNN7EXAMPL");
    assert_not(Detector::AwsKey, "AKIAiosfodnn7example");
    assert_not(Detector::AwsKey, "AKIAIOSFODNN7EXAMPLEX");
    // 40 characters but one case only: a SHA-1, not a secret key.
    assert_not(Detector::AwsKey, "3f786850e387550fdab836ed7e6dc881de23001b");
}

#[test]
fn cloud_keys() {
    let gcp = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI";
    assert_eq!(gcp.len(), 39);
    assert_finds(Detector::CloudKey, &format!("gcp {gcp}"), gcp);
    let ghp = "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";
    assert_finds(Detector::CloudKey, &format!("token: {ghp}"), ghp);
    let gho = "gho_16C7e42F292c6912E7710c838347Ae178B4a";
    assert_finds(Detector::CloudKey, gho, gho);
    let pat = "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghij";
    assert_finds(Detector::CloudKey, pat, pat);
    let slack = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
    assert_finds(Detector::CloudKey, &format!("slack {slack}"), slack);
    let azure_key =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    assert_finds(
        Detector::CloudKey,
        &format!(
            "DefaultEndpointsProtocol=https;AccountName=x;AccountKey={azure_key};EndpointSuffix=core.windows.net"
        ),
        azure_key,
    );
    assert_not(Detector::CloudKey, "ghp_short");
    assert_not(Detector::CloudKey, "xoxq-123456789012-1234567890");
    assert_not(Detector::CloudKey, "AIzaShort");
    assert_not(Detector::CloudKey, "AccountKey=short");
}

pub(crate) const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

#[test]
fn jwts_need_a_json_header_with_alg() {
    assert_finds(Detector::Jwt, &format!("Authorization: Bearer {JWT}"), JWT);
    // {"foo":"bar"} has no alg.
    let no_alg = "eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fw";
    assert!(found_with(only(Detector::Jwt), no_alg).is_empty());
    // Two parts only.
    assert!(
        found_with(
            only(Detector::Jwt),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0"
        )
        .is_empty()
    );
    // Not base64url JSON.
    assert!(found_with(only(Detector::Jwt), "eyJ!!!.abc.def").is_empty());
}

#[test]
fn private_key_blocks() {
    let block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq\nXyZ0123==\n-----END RSA PRIVATE KEY-----";
    assert_finds(
        Detector::PrivateKey,
        &format!("key:\n{block}\nthanks"),
        block,
    );
    let openssh = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
    assert_finds(Detector::PrivateKey, openssh, openssh);
    // Truncated: masked to the end of the value.
    let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    assert_finds(Detector::PrivateKey, &format!("oops {cut}"), cut);
    assert_not(
        Detector::PrivateKey,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    );
    assert_not(
        Detector::PrivateKey,
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
    );
}

#[test]
fn high_entropy_tokens() {
    assert_finds(
        Detector::HighEntropy,
        "token Zx9Qk2LmP4vR8sT1wY6uB3nD end",
        "Zx9Qk2LmP4vR8sT1wY6uB3nD",
    );
    assert_finds(
        Detector::HighEntropy,
        "sha 3f786850e387550fdab836ed7e6dc881de23001b",
        "3f786850e387550fdab836ed7e6dc881de23001b",
    );
    assert_finds(
        Detector::HighEntropy,
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    );
    for bad in [
        "internationalization_configuration",
        "550e8400-e29b-41d4-a716-446655440000",
        "aaaaaaaaaaaaaaaaaaaaaaaa1A",
        "customer_email_address_verified",
        "/usr/local/lib/python3/site-packages",
        "ShortToken123",
        "0123456789012345678901234567",
    ] {
        assert!(
            found_with(only(Detector::HighEntropy), bad).is_empty(),
            "{bad} is not high entropy"
        );
    }
}

#[test]
fn prose_and_ordinary_values_match_nothing() {
    for s in [
        "Prefers morning deliveries; called on 2024-03-01 about the invoice.",
        "Order #12345 shipped to 221B Baker Street, London NW1 6XE.",
        "Version 1.2.3 released at 10:30:45 by the build team (see CHANGELOG).",
        "Ann-Marie O'Neil",
        "42",
        "",
        "Müller & Söhne GmbH — café",
        "The quick brown fox jumps over the lazy dog.",
    ] {
        assert_none(s);
    }
}

#[test]
fn several_detectors_in_one_value_are_ordered_and_disjoint() {
    let s = format!("mail a@b.io card 4111111111111111 ip 10.1.2.3 jwt {JWT} ssn 123-45-6789");
    let got = found(&s);
    let kinds: Vec<Detector> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        kinds,
        vec![
            Detector::Email,
            Detector::Card,
            Detector::Ip,
            Detector::Jwt,
            Detector::Ssn
        ]
    );
}

#[test]
fn trigger_scan_matches_scalar_definition() {
    let is_trigger = |b: u8| matches!(b, 0x30..=0x3D | 0x40..=0x5A);
    for b in 0..=255u8 {
        for lane in 0..8 {
            for len in [lane + 1, 8, 9, 17] {
                let mut v = vec![b'a'; len.max(lane + 1)];
                v[lane] = b;
                let want = if is_trigger(b) { Some(lane) } else { None };
                assert_eq!(
                    detect::next_trigger(&v, 0),
                    want,
                    "byte {b:#x} at {lane} of {len}"
                );
            }
        }
    }
    assert_eq!(detect::next_trigger(b"abcdefghijklmnopq9", 0), Some(17));
    assert_eq!(detect::next_trigger(b"A bcdefghijk", 1), None);
}

#[test]
fn checksums() {
    assert!(detect::luhn(&[
        4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
    ]));
    assert!(!detect::luhn(&[
        4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2
    ]));
    assert!(detect::iban_checksum(b"GB82WEST12345698765432"));
    assert!(!detect::iban_checksum(b"GB82WEST12345698765433"));
    assert!(!detect::iban_checksum(b"gb82west12345698765432"));
}

// ---------------------------------------------------------------------------------------------
// masker, plans, styles

pub(crate) fn text_col<'a>(table: &'a str, column: &'a str) -> ColumnRef<'a> {
    ColumnRef {
        schema: "public",
        table,
        column,
        kind: ValueKind::Text,
        type_id: 25,
        format: ValueFormat::Text,
    }
}

pub(crate) fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn mask_one(plan: &mut ColumnPlan, col: usize, v: &[u8]) -> (MaskOutcome, Vec<u8>) {
    let mut out = BytesMut::new();
    let o = plan.mask_value(col, v, &mut out).expect("mask");
    (o, out.to_vec())
}

#[test]
fn every_style_on_a_column_rule() {
    let specs = vec![
        rule("r", &["*.t.redact"], &[], MaskStyle::Redact),
        rule("p", &["t.partial"], &[], MaskStyle::Partial),
        rule("h", &["public.t.hash"], &[], MaskStyle::Hash),
        rule("n", &["null"], &[], MaskStyle::Null),
    ];
    let m = Masker::new(&specs, KEY).expect("masker");
    let cols = [
        text_col("t", "redact"),
        text_col("t", "partial"),
        text_col("t", "hash"),
        text_col("t", "null"),
        text_col("t", "other"),
    ];
    let mut plan = m.plan(&cols, &names(&["r", "p", "h", "n"])).expect("plan");
    let (o, out) = mask_one(&mut plan, 0, b"alice@example.com");
    assert_eq!(
        o,
        MaskOutcome::Replaced {
            rules: RuleSet::one(RuleId(0))
        }
    );
    assert_eq!(out, REDACTED);
    let (_, out) = mask_one(&mut plan, 1, b"4111 1111 1111 1111");
    assert_eq!(out, b"**** **** **** 1111");
    let (_, out) = mask_one(&mut plan, 1, b"abc");
    assert_eq!(out, b"***", "short values are hidden whole");
    let (_, out) = mask_one(&mut plan, 1, "José Müller".as_bytes());
    assert_eq!(String::from_utf8(out).expect("utf8"), "**** **ller");
    let (_, h1) = mask_one(&mut plan, 2, b"alice@example.com");
    let (_, h2) = mask_one(&mut plan, 2, b"alice@example.com");
    let (_, h3) = mask_one(&mut plan, 2, b"bob@example.com");
    assert_eq!(h1.len(), HASH_HEX_LEN);
    assert!(h1.iter().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(h1, h2, "deterministic");
    assert_ne!(h1, h3);
    let (o, out) = mask_one(&mut plan, 3, b"secret");
    assert_eq!(o, MaskOutcome::Null { rule: RuleId(3) });
    assert!(out.is_empty());
    let (o, out) = mask_one(&mut plan, 4, b"alice@example.com");
    assert_eq!(o, MaskOutcome::Unchanged, "no detector rule is active");
    assert!(out.is_empty());
    let counts = plan.take_counts();
    assert_eq!(counts.get(RuleId(0)), 1);
    assert_eq!(counts.get(RuleId(1)), 3);
    assert_eq!(counts.get(RuleId(2)), 3);
    assert_eq!(counts.get(RuleId(3)), 1);
    assert!(plan.take_counts().is_empty());
}

#[test]
fn hash_is_keyed_and_joins_across_rules() {
    let specs = vec![
        rule("a", &["customers.email"], &[], MaskStyle::Hash),
        rule("b", &[], &[Detector::Email], MaskStyle::Hash),
    ];
    let m1 = Masker::new(&specs, KEY).expect("masker");
    let m2 = Masker::new(&specs, b"another key of 16+ bytes").expect("masker");
    let cols = [text_col("customers", "email"), text_col("orders", "note")];
    let mut p1 = m1.plan(&cols, &names(&["a", "b"])).expect("plan");
    let mut p2 = m2.plan(&cols, &names(&["a", "b"])).expect("plan");
    let (_, col_hash) = mask_one(&mut p1, 0, b"alice@example.com");
    let (_, note) = mask_one(&mut p1, 1, b"from alice@example.com today");
    let expect = format!(
        "from {} today",
        String::from_utf8(col_hash.clone()).expect("hex")
    );
    assert_eq!(
        String::from_utf8(note).expect("utf8"),
        expect,
        "same value, same hash"
    );
    let (_, other_key) = mask_one(&mut p2, 0, b"alice@example.com");
    assert_ne!(col_hash, other_key);
}

#[test]
fn detector_spans_per_style() {
    let text = "reach alice@example.com or 555-123-4567";
    for (style, expect) in [
        (
            MaskStyle::Redact,
            "reach [REDACTED] or [REDACTED]".to_string(),
        ),
        (
            MaskStyle::Partial,
            "reach *****@******e.com or ***-***-4567".to_string(),
        ),
    ] {
        let m = Masker::new(
            &[rule("d", &[], &[Detector::Email, Detector::Phone], style)],
            KEY,
        )
        .expect("masker");
        let mut plan = m
            .plan(&[text_col("t", "notes")], &names(&["d"]))
            .expect("plan");
        let (o, out) = mask_one(&mut plan, 0, text.as_bytes());
        assert_eq!(
            o,
            MaskOutcome::Replaced {
                rules: RuleSet::one(RuleId(0))
            }
        );
        assert_eq!(String::from_utf8(out).expect("utf8"), expect, "{style:?}");
    }
    let m =
        Masker::new(&[rule("d", &[], &[Detector::Email], MaskStyle::Null)], KEY).expect("masker");
    let mut plan = m
        .plan(&[text_col("t", "notes")], &names(&["d"]))
        .expect("plan");
    assert_eq!(
        mask_one(&mut plan, 0, text.as_bytes()).0,
        MaskOutcome::Null { rule: RuleId(0) }
    );
    assert_eq!(
        mask_one(&mut plan, 0, b"nothing here").0,
        MaskOutcome::Unchanged
    );
}

#[test]
fn detectors_belong_to_the_first_active_rule() {
    let specs = vec![
        rule("emails", &[], &[Detector::Email], MaskStyle::Redact),
        rule(
            "contact",
            &[],
            &[Detector::Email, Detector::Phone],
            MaskStyle::Hash,
        ),
    ];
    let m = Masker::new(&specs, KEY).expect("masker");
    let mut plan = m
        .plan(&[text_col("t", "n")], &names(&["contact", "emails"]))
        .expect("plan");
    let (o, out) = mask_one(&mut plan, 0, b"a@b.io 555-123-4567");
    assert_eq!(
        o,
        MaskOutcome::Replaced {
            rules: RuleSet(0b11)
        }
    );
    let out = String::from_utf8(out).expect("utf8");
    assert!(out.starts_with("[REDACTED] "), "{out}");
    assert_eq!(out.len(), "[REDACTED] ".len() + HASH_HEX_LEN);
    // Only "contact" active: it takes both.
    let mut plan = m
        .plan(&[text_col("t", "n")], &names(&["contact"]))
        .expect("plan");
    let (o, _) = mask_one(&mut plan, 0, b"a@b.io");
    assert_eq!(
        o,
        MaskOutcome::Replaced {
            rules: RuleSet::one(RuleId(1))
        }
    );
    // Nothing active: nothing masked.
    let mut plan = m.plan(&[text_col("t", "n")], &[]).expect("plan");
    assert!(plan.is_passthrough());
    assert_eq!(mask_one(&mut plan, 0, b"a@b.io").0, MaskOutcome::Unchanged);
}

#[test]
fn configuration_errors_fail_closed() {
    let hash = rule("h", &["email"], &[], MaskStyle::Hash);
    assert!(matches!(
        Masker::new(std::slice::from_ref(&hash), b""),
        Err(MaskError::InvalidRule { .. })
    ));
    assert_eq!(
        Masker::new(&[hash], b"short").err(),
        Some(MaskError::WeakKey { len: 5 })
    );
    let dup = [
        rule("a", &["x"], &[], MaskStyle::Redact),
        rule("a", &["y"], &[], MaskStyle::Redact),
    ];
    assert!(matches!(
        Masker::new(&dup, b""),
        Err(MaskError::InvalidRule { .. })
    ));
    assert!(matches!(
        Masker::new(&[rule("e", &[], &[], MaskStyle::Redact)], b""),
        Err(MaskError::InvalidRule { .. })
    ));
    assert!(matches!(
        Masker::new(&[rule("g", &["a.b.c.d"], &[], MaskStyle::Redact)], b""),
        Err(MaskError::InvalidRule { .. })
    ));
    let many: Vec<_> = (0..65)
        .map(|i| rule(&format!("r{i}"), &["x"], &[], MaskStyle::Redact))
        .collect();
    assert_eq!(
        Masker::new(&many, b"").err(),
        Some(MaskError::TooManyRules { count: 65 })
    );
    let m = Masker::new(&[rule("a", &["x"], &[], MaskStyle::Redact)], b"").expect("masker");
    assert_eq!(
        m.plan(&[text_col("t", "x")], &names(&["nope"])).err(),
        Some(MaskError::UnknownRule("nope".into()))
    );
    let mut plan = m.plan(&[text_col("t", "x")], &names(&["a"])).expect("plan");
    assert_eq!(
        plan.mask_value(1, b"v", &mut BytesMut::new()).err(),
        Some(MaskError::ColumnIndex { index: 1, len: 1 })
    );
    assert!(format!("{m:?}").contains("Masker"));
}

#[test]
fn except_groups_drop_rules() {
    let mut r = rule("a", &["x"], &[], MaskStyle::Redact);
    r.except_groups = vec!["dba".into()];
    let m = Masker::new(&[r, rule("b", &["y"], &[], MaskStyle::Redact)], b"").expect("masker");
    let all = names(&["a", "b", "zzz"]);
    assert_eq!(m.applicable(&all, &names(&["agents"])), all);
    assert_eq!(
        m.applicable(&all, &names(&["agents", "dba"])),
        names(&["b", "zzz"])
    );
}

#[test]
fn spec_parses_from_yaml() {
    let yaml = "- name: contact\n  columns: ['*.customers.email']\n  detectors: [email, card, iban, ssn, phone, ip, aws_key, cloud_key, jwt, private_key, high_entropy]\n  style: partial\n  except_groups: [dba]\n";
    let specs: Vec<MaskRuleSpec> = serde_norway::from_str(yaml).expect("yaml");
    assert_eq!(specs[0].detectors.len(), 11);
    Masker::new(&specs, b"").expect("masker");
}

pub(crate) fn customer_masker() -> Masker {
    Masker::new(
        &[
            rule("email", &["*.customers.email"], &[], MaskStyle::Partial),
            rule("card", &["customers.card"], &[], MaskStyle::Null),
            rule(
                "secrets",
                &[],
                &[
                    Detector::AwsKey,
                    Detector::Jwt,
                    Detector::Card,
                    Detector::Email,
                ],
                MaskStyle::Redact,
            ),
        ],
        KEY,
    )
    .expect("masker")
}

fn customer_col(column: &'static str, kind: ValueKind, type_id: u32) -> ColumnRef<'static> {
    ColumnRef {
        schema: "public",
        table: "customers",
        column,
        kind,
        type_id,
        format: ValueFormat::Text,
    }
}

pub(crate) fn customer_cols() -> Vec<ColumnRef<'static>> {
    vec![
        customer_col("id", ValueKind::Plain, 23),
        customer_col("name", ValueKind::Text, 25),
        customer_col("email", ValueKind::Text, 25),
        customer_col("card", ValueKind::Text, 25),
        customer_col("notes", ValueKind::Text, 25),
    ]
}

pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn pick(&mut self, v: &[&'static str]) -> &'static str {
        v[(self.next() % v.len() as u64) as usize]
    }
}

#[test]
fn high_entropy_catches_random_tokens() {
    const B62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const HEXD: &[u8] = b"0123456789abcdef";
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut set = DetectorSet::default();
    set.insert(Detector::HighEntropy);
    let mut missed = 0;
    let trials = 2000;
    for t in 0..trials {
        let (alphabet, len) = if t % 2 == 0 {
            (B62, 20 + (rng.next() % 45) as usize)
        } else {
            (HEXD, 32 + (rng.next() % 33) as usize)
        };
        let tok: String = (0..len)
            .map(|_| char::from(alphabet[(rng.next() % alphabet.len() as u64) as usize]))
            .collect();
        if found_with(set, &format!("secret: {tok} end")).is_empty() {
            missed += 1;
        }
    }
    // Short random tokens without a digit or a capital, or that happen to contain words, are
    // the misses (about one in ten at 20 characters, under one in a hundred from 40).
    assert!(missed * 100 < trials * 4, "missed {missed} of {trials}");
    for id in [
        "customerAccountNumber2024",
        "MyCompanyName2023Report",
        "InvoiceNumber2024March15",
        "ProductSKU12345ColorRed",
        "iPhone15ProMaxSilver256GB",
        "Windows10ProfessionalX64",
        "HTTP2ConnectionPoolSize10",
        "userName_2024_03_15_backup",
        "Q3Revenue2024ForecastV2",
    ] {
        assert!(found_with(set, id).is_empty(), "{id} is an identifier");
    }
}

#[test]
fn masker_is_shareable_and_plans_move_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Masker>();
    send::<ColumnPlan>();
    let m = customer_masker();
    let handle = std::thread::spawn(move || {
        m.plan(&customer_cols(), &names(&["email"]))
            .map(|p| p.len())
    });
    assert_eq!(handle.join().expect("thread"), Ok(5));
}

#[test]
fn wide_text_is_masked_whole_by_column_rules_and_refused_to_detectors() {
    let m = customer_masker();
    let wide = ValueKind::WideText { charset: "utf16" };
    let all = names(&["email", "card", "secrets"]);
    // A column rule replaces the value whole (in UTF-8, announced as text by the protocol).
    let mut plan = m
        .plan(&[customer_col("email", wide, 253)], &all)
        .expect("plan");
    let utf16: Vec<u8> = "ada@example.com"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    let (o, out) = mask_one(&mut plan, 0, &utf16);
    assert!(matches!(o, MaskOutcome::Replaced { .. }), "{o:?}");
    assert!(!out.windows(3).any(|w| w == b"\0d\0"), "{out:?}");
    assert!(plan.masked_as_text(0, wide));
    // Detectors cannot read it: the result is refused, not passed.
    let err = m
        .plan(&[customer_col("notes", wide, 253)], &all)
        .expect_err("refused");
    assert!(
        matches!(
            err,
            MaskError::Unreadable {
                charset: "utf16",
                ..
            }
        ),
        "{err}"
    );
    // Without detectors nothing needs reading.
    let plan = m
        .plan(&[customer_col("notes", wide, 253)], &names(&["email"]))
        .expect("plan");
    assert!(plan.is_passthrough());
    // In binary format a column rule other than null cannot re-announce the column.
    let mut col = customer_col("email", wide, 253);
    col.format = ValueFormat::Binary;
    assert!(matches!(
        m.plan(&[col], &all),
        Err(MaskError::BinaryUnsupported { .. })
    ));
}
