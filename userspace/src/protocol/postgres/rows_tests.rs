//! Unit tests of PostgreSQL's side of masking: type OIDs mapped for the engine, DataRow and
//! COPY (text and CSV) framing, and the catalog cache.
#![allow(clippy::unwrap_used)]

use bytes::{BufMut, BytesMut};

use super::catalog::CatalogCache;
use super::rows::*;
use super::types::{oid, value_kind};
use crate::config::policy::{Detector, MaskStyle};
use crate::mask::tests::{
    JWT, KEY, Rng, all_detectors, customer_cols, customer_masker, mask_one, names, rule, text_col,
};
use crate::mask::*;

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
        kind: value_kind(type_oid),
        type_id: type_oid,
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
            type_id: oid::INT4
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
    assert!(plan.masked_as_text(0, value_kind(oid::INT4)));
    assert!(!plan.masked_as_text(0, value_kind(oid::TEXT)));
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
    for d in all_detectors() {
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
fn catalog_cache_names_are_bounded_and_unqualified_names_are_every_relation() {
    use super::catalog::MAX_NAMES;
    let mut c = CatalogCache::new();
    let names: Vec<(Option<String>, String)> =
        (0..=MAX_NAMES).map(|i| (None, format!("t{i}"))).collect();
    let row: Vec<Option<&[u8]>> = names.iter().map(|_| Some(&b""[..])).collect();
    c.insert_names(&names, &row);
    assert!(c.names_full());
    c.invalidate();
    assert!(!c.names_full());
    // One name, two relations (two schemas): both are candidates.
    let n = vec![(None, "people".to_string())];
    c.insert_names(&n, &[Some(&b"16384,16390"[..])]);
    assert_eq!(c.name_oids(None, "people"), &[16384, 16390]);
    assert!(c.name_oids(Some("crm"), "people").is_empty());
    assert!(c.missing_names([(Some("crm"), "people")]).len() == 1);
}
