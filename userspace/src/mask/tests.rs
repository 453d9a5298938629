//! Unit tests of the masking engine: detectors (positives and near misses), styles, formats,
//! DataRow and COPY framing, and a randomized check that raw values never come out.

use bytes::{BufMut, BytesMut};

use super::detect::{self, DetectorSet, Match};
use super::*;
use crate::policy::spec::{Detector, MaskRuleSpec, MaskStyle};

const KEY: &[u8] = b"0123456789abcdef-test-key";

fn rule(name: &str, columns: &[&str], detectors: &[Detector], style: MaskStyle) -> MaskRuleSpec {
    MaskRuleSpec {
        name: name.into(),
        columns: columns.iter().map(|s| s.to_string()).collect(),
        detectors: detectors.to_vec(),
        style,
        except_groups: vec![],
    }
}

fn all_detectors() -> DetectorSet {
    let mut s = DetectorSet::default();
    for d in detect::ALL_DETECTORS {
        s.insert(d);
    }
    s
}

/// The spans the full detector set finds in `s`.
fn found(s: &str) -> Vec<(String, Detector)> {
    found_with(all_detectors(), s)
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

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

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

fn text_col<'a>(table: &'a str, column: &'a str) -> ColumnRef<'a> {
    ColumnRef {
        schema: "public",
        table,
        column,
        type_oid: oid::TEXT,
        format: ValueFormat::Text,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn mask_one(plan: &mut ColumnPlan, col: usize, v: &[u8]) -> (MaskOutcome, Vec<u8>) {
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

// ---------------------------------------------------------------------------------------------
// binary and JSON

fn col(
    table: &'static str,
    column: &'static str,
    type_oid: u32,
    format: ValueFormat,
) -> ColumnRef<'static> {
    ColumnRef {
        schema: "public",
        table,
        column,
        type_oid,
        format,
    }
}

#[test]
fn binary_formats() {
    let m = Masker::new(
        &[
            rule("cols", &["t.secret"], &[], MaskStyle::Redact),
            rule("gone", &["t.gone"], &[], MaskStyle::Null),
            rule(
                "det",
                &[],
                &[Detector::Email, Detector::Ip],
                MaskStyle::Redact,
            ),
        ],
        b"",
    )
    .expect("masker");
    let bin = ValueFormat::Binary;
    // Text-like binary values are raw bytes: masked like text.
    for t in [oid::TEXT, oid::VARCHAR, oid::BPCHAR, oid::NAME, oid::BYTEA] {
        let mut plan = m
            .plan(
                &[col("t", "secret", t, bin), col("t", "n", t, bin)],
                &names(&["cols", "det"]),
            )
            .expect("plan");
        assert_eq!(mask_one(&mut plan, 0, b"anything").1, REDACTED);
        assert_eq!(mask_one(&mut plan, 1, b"x a@b.io").1, b"x [REDACTED]");
    }
    // Other binary types under a column rule are refused.
    let err = m
        .plan(&[col("t", "secret", oid::INT4, bin)], &names(&["cols"]))
        .err();
    assert_eq!(
        err,
        Some(MaskError::BinaryUnsupported {
            column: "public.t.secret".into(),
            type_oid: oid::INT4
        })
    );
    assert!(err.expect("err").to_string().contains("text format"));
    // ...unless the style is null, which needs no encoding.
    let mut plan = m
        .plan(&[col("t", "gone", oid::INT8, bin)], &names(&["gone"]))
        .expect("plan");
    assert_eq!(
        mask_one(&mut plan, 0, &7i64.to_be_bytes()).0,
        MaskOutcome::Null { rule: RuleId(1) }
    );
    // A binary inet under the ip detector cannot be rewritten: refused.
    assert!(matches!(
        m.plan(&[col("t", "addr", oid::INET, bin)], &names(&["det"])),
        Err(MaskError::BinaryUnsupported { .. })
    ));
    // Binary ints cannot hold text: passed through.
    let mut plan = m
        .plan(&[col("t", "id", oid::INT4, bin)], &names(&["det"]))
        .expect("plan");
    assert!(plan.is_passthrough());
    assert_eq!(
        mask_one(&mut plan, 0, &1i32.to_be_bytes()).0,
        MaskOutcome::Unchanged
    );
    // In text format, a masked int column is announced as text.
    let plan = m
        .plan(
            &[col("t", "secret", oid::INT4, ValueFormat::Text)],
            &names(&["cols"]),
        )
        .expect("plan");
    assert!(plan.masked_as_text(0, oid::INT4));
    assert!(!plan.masked_as_text(0, oid::TEXT));
    assert_eq!(
        ValueFormat::from_code(2).err(),
        Some(MaskError::FormatCode(2))
    );
}

#[test]
fn json_stays_json() {
    let m = Masker::new(
        &[
            rule("doc", &["t.doc"], &[], MaskStyle::Redact),
            rule("det", &[], &[Detector::Email], MaskStyle::Partial),
        ],
        b"",
    )
    .expect("masker");
    let cols = [
        col("t", "doc", oid::JSONB, ValueFormat::Binary),
        col("t", "doc", oid::JSON, ValueFormat::Text),
        col("t", "meta", oid::JSONB, ValueFormat::Binary),
    ];
    let mut plan = m.plan(&cols, &names(&["doc", "det"])).expect("plan");
    let (_, out) = mask_one(&mut plan, 0, b"\x01{\"a\": 1}");
    assert_eq!(out, b"\x01\"[REDACTED]\"");
    let (_, out) = mask_one(&mut plan, 1, b"{\"a\": 1}");
    assert_eq!(out, b"\"[REDACTED]\"");
    let (_, out) = mask_one(&mut plan, 2, b"\x01{\"mail\": \"alice@example.com\"}");
    assert_eq!(out, b"\x01{\"mail\": \"*****@******e.com\"}");
    let parsed: serde_json::Value = serde_json::from_slice(&out[1..]).expect("valid json");
    assert_eq!(parsed["mail"], "*****@******e.com");
}

// ---------------------------------------------------------------------------------------------
// DataRow framing

/// Builds a DataRow body from column values.
fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        match v {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
    b.to_vec()
}

/// Parses a full DataRow message back, checking every length.
fn parse_row(msg: &[u8]) -> Vec<Option<Vec<u8>>> {
    assert_eq!(msg[0], b'D');
    let len = i32::from_be_bytes(msg[1..5].try_into().expect("len")) as usize;
    assert_eq!(len, msg.len() - 1, "frame length covers the message");
    let body = &msg[5..];
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    let mut cols = Vec::new();
    for _ in 0..n {
        let l = i32::from_be_bytes(body[pos..pos + 4].try_into().expect("len"));
        pos += 4;
        if l == -1 {
            cols.push(None);
        } else {
            cols.push(Some(body[pos..pos + l as usize].to_vec()));
            pos += l as usize;
        }
    }
    assert_eq!(pos, body.len(), "no trailing bytes");
    cols
}

fn customer_masker() -> Masker {
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

fn customer_cols() -> Vec<ColumnRef<'static>> {
    vec![
        col("customers", "id", oid::INT4, ValueFormat::Text),
        col("customers", "name", oid::TEXT, ValueFormat::Text),
        col("customers", "email", oid::TEXT, ValueFormat::Text),
        col("customers", "card", oid::TEXT, ValueFormat::Text),
        col("customers", "notes", oid::TEXT, ValueFormat::Text),
    ]
}

#[test]
fn data_row_round_trips() {
    let m = customer_masker();
    let cols = customer_cols();
    let mut plan = m
        .plan(&cols, &names(&["email", "card", "secrets"]))
        .expect("plan");
    let body = data_row(&[
        Some(b"7"),
        Some(b"Alice"),
        Some(b"alice@example.com"),
        Some(b"4111111111111111"),
        Some(b"key AKIAIOSFODNN7EXAMPLE ok"),
    ]);
    let mut out = BytesMut::from(&b"prefix"[..]);
    let r = plan.mask_data_row(&body, &mut out).expect("row");
    assert!(r.rewritten);
    assert_eq!(&out[..6], b"prefix", "appends after existing bytes");
    let row = parse_row(&out[6..]);
    assert_eq!(
        row,
        vec![
            Some(b"7".to_vec()),
            Some(b"Alice".to_vec()),
            Some(b"*****@******e.com".to_vec()),
            None,
            Some(b"key [REDACTED] ok".to_vec()),
        ]
    );
    assert_eq!(r.counts.get(RuleId(0)), 1);
    assert_eq!(r.counts.get(RuleId(1)), 1);
    assert_eq!(r.counts.get(RuleId(2)), 1);
    assert_eq!(r.counts.total(), 3);
}

#[test]
fn data_row_unchanged_is_not_copied() {
    let m = customer_masker();
    let mut plan = m
        .plan(&customer_cols(), &names(&["secrets"]))
        .expect("plan");
    let body = data_row(&[Some(b"1"), Some(b"Bob"), None, None, Some(b"likes tea")]);
    let mut out = BytesMut::new();
    let r = plan.mask_data_row(&body, &mut out).expect("row");
    assert!(!r.rewritten);
    assert!(r.counts.is_empty());
    assert!(out.is_empty());
}

#[test]
fn data_row_first_last_and_null_columns() {
    let m = customer_masker();
    let mut plan = m
        .plan(&customer_cols(), &names(&["secrets"]))
        .expect("plan");
    // Only the last column changes.
    let body = data_row(&[
        Some(b"1"),
        None,
        Some(b"x"),
        Some(b""),
        Some(JWT.as_bytes()),
    ]);
    let mut out = BytesMut::new();
    plan.mask_data_row(&body, &mut out).expect("row");
    assert_eq!(
        parse_row(&out),
        vec![
            Some(b"1".to_vec()),
            None,
            Some(b"x".to_vec()),
            Some(vec![]),
            Some(REDACTED.to_vec())
        ]
    );
    // The first maskable column changes, later ones are copied raw.
    let body = data_row(&[
        Some(b"1"),
        Some(b"a@b.io"),
        None,
        Some(b"plain"),
        Some(b"tail"),
    ]);
    let mut out = BytesMut::new();
    plan.mask_data_row(&body, &mut out).expect("row");
    assert_eq!(
        parse_row(&out),
        vec![
            Some(b"1".to_vec()),
            Some(REDACTED.to_vec()),
            None,
            Some(b"plain".to_vec()),
            Some(b"tail".to_vec())
        ]
    );
    // A null-style column rule alone.
    let mut plan = m.plan(&customer_cols(), &names(&["card"])).expect("plan");
    let body = data_row(&[
        Some(b"1"),
        Some(b"n"),
        Some(b"e"),
        Some(b"4111111111111111"),
        Some(b"x"),
    ]);
    let mut out = BytesMut::new();
    let r = plan.mask_data_row(&body, &mut out).expect("row");
    assert_eq!(r.counts.get(RuleId(1)), 1);
    assert_eq!(parse_row(&out)[3], None);
}

#[test]
fn malformed_rows_are_refused_and_leave_nothing() {
    let m = customer_masker();
    let mut plan = m
        .plan(&customer_cols(), &names(&["email", "secrets"]))
        .expect("plan");
    let good = data_row(&[
        Some(b"1"),
        Some(b"a@b.io"),
        Some(b"alice@example.com"),
        None,
        Some(b"x"),
    ]);
    for cut in [1, 5, good.len() - 1] {
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(
            plan.mask_data_row(&good[..cut], &mut out).is_err(),
            "cut at {cut}"
        );
        assert_eq!(&out[..], b"keep");
    }
    let mut extra = good.clone();
    extra.push(0);
    let mut out = BytesMut::new();
    assert_eq!(
        plan.mask_data_row(&extra, &mut out).err(),
        Some(MaskError::MalformedRow(
            "trailing bytes after the last column"
        ))
    );
    assert!(out.is_empty());
    let short = data_row(&[Some(b"1")]);
    assert_eq!(
        plan.mask_data_row(&short, &mut out).err(),
        Some(MaskError::RowShape {
            got: 1,
            expected: 5
        })
    );
    let mut neg = data_row(&[Some(b"1"), None, None, None, None]);
    neg[2..6].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(plan.mask_data_row(&neg, &mut out).is_err());
}

// ---------------------------------------------------------------------------------------------
// COPY

#[test]
fn copy_escapes_round_trip() {
    let raw: Vec<u8> = b"a\\b\tc\nd\re\x08f\x0cg\x0bh".to_vec();
    let mut esc = BytesMut::new();
    escape_copy_text(&raw, &mut esc);
    assert_eq!(&esc[..], b"a\\\\b\\tc\\nd\\re\\bf\\fg\\vh");
    let mut back = Vec::new();
    unescape_copy_text(&esc, &mut back).expect("unescape");
    assert_eq!(back, raw);
    let mut v = Vec::new();
    unescape_copy_text(b"\\101\\x42\\q\\7", &mut v).expect("unescape");
    assert_eq!(v, b"ABq\x07");
    assert!(unescape_copy_text(b"bad\\", &mut Vec::new()).is_err());
}

fn copy_msg(out: &[u8]) -> &[u8] {
    assert_eq!(out[0], b'd');
    let len = i32::from_be_bytes(out[1..5].try_into().expect("len")) as usize;
    assert_eq!(len, out.len() - 1);
    &out[5..]
}

#[test]
fn copy_lines_are_masked_with_escapes() {
    let m = customer_masker();
    let mut plan = m
        .plan(&customer_cols(), &names(&["email", "card", "secrets"]))
        .expect("plan");
    let line =
        b"1\tAl\\tice\talice@example.com\t4111111111111111\tkey:\\nAKIAIOSFODNN7EXAMPLE\\\\x\n";
    let mut out = BytesMut::new();
    let r = plan.mask_copy_data(line, &mut out).expect("copy");
    assert!(r.rewritten);
    assert_eq!(
        copy_msg(&out),
        b"1\tAl\\tice\t*****@******e.com\t\\N\tkey:\\n[REDACTED]\\\\x\n"
    );
    assert_eq!(r.counts.total(), 3);
    // An escaped value under the hash style hashes the raw value, as the DataRow path does.
    let hm = Masker::new(&[rule("h", &["t.v"], &[], MaskStyle::Hash)], KEY).expect("masker");
    let mut hp = hm
        .plan(&[text_col("t", "v")], &names(&["h"]))
        .expect("plan");
    let (_, direct) = mask_one(&mut hp, 0, b"a\tb");
    let mut out = BytesMut::new();
    hp.mask_copy_data(b"a\\tb\n", &mut out).expect("copy");
    assert_eq!(copy_msg(&out), [direct.as_slice(), b"\n"].concat());
    // Unchanged lines, multiple lines per payload, NULLs.
    let mut out = BytesMut::new();
    let r = plan
        .mask_copy_data(b"2\tBob\t\\N\t\\N\tnothing\n", &mut out)
        .expect("copy");
    assert!(!r.rewritten && out.is_empty());
    let two = b"2\tBob\t\\N\t\\N\tnothing\n3\tC\tc@d.io\t\\N\tx\n";
    let r = plan.mask_copy_data(two, &mut out).expect("copy");
    assert!(r.rewritten);
    assert_eq!(
        copy_msg(&out),
        b"2\tBob\t\\N\t\\N\tnothing\n3\tC\t*@*.**\t\\N\tx\n"
    );
}

#[test]
fn copy_refuses_what_it_cannot_mask() {
    let m = customer_masker();
    let mut plan = m.plan(&customer_cols(), &names(&["email"])).expect("plan");
    let mut out = BytesMut::new();
    assert_eq!(
        plan.mask_copy_data(b"1\tA\ta@b.io\t\\N\tx", &mut out).err(),
        Some(MaskError::MalformedCopy("CopyData does not end a line"))
    );
    // CSV (or any other field count) is refused.
    assert_eq!(
        plan.mask_copy_data(b"1,A,a@b.io,,x\n", &mut out).err(),
        Some(MaskError::RowShape {
            got: 1,
            expected: 5
        })
    );
    assert!(
        plan.mask_copy_data(b"1\tA\ta\\\t\\N\tx\n", &mut out)
            .is_err()
    );
    assert!(out.is_empty());
}

// ---------------------------------------------------------------------------------------------
// catalog

#[test]
fn catalog_cache_resolves_fields() {
    let mut c = CatalogCache::new();
    assert_eq!(
        c.missing_tables([(16384, 1), (0, 0), (16384, 2), (16390, 1)]),
        vec![16384, 16390]
    );
    let q = CatalogCache::query(&[16384, 16390]);
    assert!(q.contains("'{16384,16390}'"), "{q}");
    assert!(
        c.column_ref("e", 16384, 3, oid::TEXT, ValueFormat::Text)
            .is_none(),
        "unresolved tables are not guessed"
    );
    c.insert_row(&[
        Some(b"16384"),
        Some(b"public"),
        Some(b"customers"),
        Some(b"3"),
        Some(b"email"),
    ])
    .expect("row");
    c.mark_loaded(&[16390]);
    assert!(c.missing_tables([(16384, 1), (16390, 1)]).is_empty());
    let r = c
        .column_ref("e", 16384, 3, oid::TEXT, ValueFormat::Text)
        .expect("resolved");
    assert_eq!(
        (r.schema, r.table, r.column),
        ("public", "customers", "email")
    );
    let r = c
        .column_ref("count", 0, 0, oid::INT8, ValueFormat::Text)
        .expect("computed");
    assert_eq!((r.schema, r.table, r.column), ("", "", "count"));
    assert!(
        c.insert_row(&[Some(b"x"), Some(b"a"), Some(b"b"), Some(b"1"), Some(b"c")])
            .is_err()
    );
    assert!(
        c.insert_row(&[Some(b"1"), None, Some(b"b"), Some(b"1"), Some(b"c")])
            .is_err()
    );
    c.invalidate();
    assert!(c.lookup(16384, 3).is_none());
}

// ---------------------------------------------------------------------------------------------
// randomized: raw secrets never come out

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, v: &[&'static str]) -> &'static str {
        v[(self.next() % v.len() as u64) as usize]
    }
}

const SECRETS: &[&str] = &[
    "alice.smith@example.com",
    "4111111111111111",
    "5555-5555-5555-4444",
    "GB82WEST12345698765432",
    "123-45-6789",
    "(555) 123-4567",
    "+44 20 7946 0958",
    "192.168.10.20",
    "2001:db8::8a2e:370:7334",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "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",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp",
    "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
    JWT,
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg\n-----END EC PRIVATE KEY-----",
    "Zx9Qk2LmP4vR8sT1wY6uB3nD",
];

const FILLER: &[&str] = &[
    "hello",
    "the customer",
    "called",
    "about",
    "order",
    "42",
    "note:",
    "(see above)",
    "—",
    "café",
    "",
    "\t",
    "\n",
    "tel",
    "ip",
    "key=",
    "token:",
    "<",
    ">",
    "\"",
    ",",
    ";",
];

#[test]
fn raw_secrets_never_appear_in_output() {
    let mut all = Vec::new();
    for d in detect::ALL_DETECTORS {
        all.push(d);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for style in [
        MaskStyle::Redact,
        MaskStyle::Partial,
        MaskStyle::Hash,
        MaskStyle::Null,
    ] {
        let m = Masker::new(&[rule("all", &[], &all, style)], KEY).expect("masker");
        let cols = [
            text_col("t", "a"),
            text_col("t", "b"),
            col("t", "c", oid::TEXT, ValueFormat::Binary),
        ];
        let mut plan = m.plan(&cols, &names(&["all"])).expect("plan");
        for _ in 0..3000 {
            let mut values: Vec<String> = Vec::new();
            let mut planted = Vec::new();
            for _ in 0..cols.len() {
                let mut v = String::new();
                for _ in 0..(rng.next() % 4) {
                    v.push_str(rng.pick(FILLER));
                    v.push(' ');
                }
                if !rng.next().is_multiple_of(3) {
                    let s = rng.pick(SECRETS);
                    v.push_str(s);
                    planted.push(s);
                }
                for _ in 0..(rng.next() % 3) {
                    v.push(' ');
                    v.push_str(rng.pick(FILLER));
                }
                values.push(v);
            }
            let body = data_row(
                &values
                    .iter()
                    .map(|v| Some(v.as_bytes()))
                    .collect::<Vec<_>>(),
            );
            let mut out = BytesMut::new();
            let r = plan.mask_data_row(&body, &mut out).expect("row");
            assert_eq!(r.rewritten, !planted.is_empty(), "values {values:?}");
            let sent: &[u8] = if r.rewritten { &out } else { &body };
            if r.rewritten {
                parse_row(&out);
            }
            for s in &planted {
                assert!(
                    memchr::memmem::find(sent, s.as_bytes()).is_none(),
                    "{style:?}: {s:?} leaked from {values:?}"
                );
            }
        }
    }
}

#[test]
fn copy_csv_rows() {
    let m = customer_masker();
    let mut plan = m
        .plan(&customer_cols(), &names(&["email", "card", "secrets"]))
        .expect("plan");
    let o = CsvOptions::default();
    // Quoted fields with delimiters, doubled quotes and a newline; NULLs are unquoted empties.
    let row = b"1,\"Smith, \"\"Al\"\"\",alice@example.com,4111111111111111,\"multi\nline AKIAIOSFODNN7EXAMPLE\"\n";
    let mut out = BytesMut::new();
    let r = plan.mask_copy_csv(row, o, &mut out).expect("csv");
    assert!(r.rewritten);
    assert_eq!(
        copy_msg(&out),
        b"1,\"Smith, \"\"Al\"\"\",\"*****@******e.com\",,\"multi\nline [REDACTED]\"\n"
    );
    assert_eq!(r.counts.total(), 3);
    // A quoted value that needs masking is unquoted first (hash of the raw value).
    let hm = Masker::new(&[rule("h", &["t.v"], &[], MaskStyle::Hash)], KEY).expect("masker");
    let mut hp = hm
        .plan(&[text_col("t", "v")], &names(&["h"]))
        .expect("plan");
    let (_, direct) = mask_one(&mut hp, 0, b"a,\"b");
    let mut out = BytesMut::new();
    hp.mask_copy_csv(b"\"a,\"\"b\"\n", o, &mut out)
        .expect("csv");
    assert_eq!(copy_msg(&out), [b"\"", direct.as_slice(), b"\"\n"].concat());
    // Backslash escape option.
    let bs = CsvOptions { escape: b'\\', ..o };
    let mut out = BytesMut::new();
    hp.mask_copy_csv(b"\"a,\\\"b\"\n", bs, &mut out)
        .expect("csv");
    assert_eq!(copy_msg(&out), [b"\"", direct.as_slice(), b"\"\n"].concat());
    // Unchanged rows and NULLs are not copied.
    let mut out = BytesMut::new();
    let r = plan
        .mask_copy_csv(b"2,Bob,,,\"\"\n", o, &mut out)
        .expect("csv");
    assert!(!r.rewritten && out.is_empty());
    // Wrong field counts, junk after a quote and unterminated quotes are refused.
    for bad in [
        &b"1,2\n"[..],
        b"1,a,b,c,d,e\n",
        b"1,\"a\"x,b,c,d\n",
        b"1,\"abc,b,c,d\n",
        b"1,a,b,c,d",
    ] {
        assert!(
            plan.mask_copy_csv(bad, o, &mut out).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(out.is_empty());
    }
    let mut esc = BytesMut::new();
    write_csv_field(b"x\"y", o, &mut esc);
    assert_eq!(&esc[..], b"\"x\"\"y\"");
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
