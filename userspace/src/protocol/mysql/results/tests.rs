//! Answers built packet by packet as MariaDB and MySQL send them, fed to the relay in pieces
//! of every size: what reaches the client, renumbered, masked, and when an answer ends.

use super::*;
use crate::config::policy::{Detector, MaskRuleSpec, MaskStyle};

fn masker() -> Arc<Masker> {
    let rule = |name: &str, columns: &[&str], detectors: &[Detector], style| MaskRuleSpec {
        name: name.into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        json_paths: vec![],
        detectors: detectors.to_vec(),
        style,
        except_groups: vec![],
        computed: Default::default(),
        compared: Default::default(),
    };
    Arc::new(
        Masker::new(
            &[
                rule("email-col", &["*.customers.email"], &[], MaskStyle::Redact),
                rule("mail", &[], &[Detector::Email], MaskStyle::Redact),
                rule("id-null", &["*.customers.secret_id"], &[], MaskStyle::Null),
                rule("since", &["*.customers.since"], &[], MaskStyle::Redact),
            ],
            b"0123456789abcdef-key-0123456789abcdef",
        )
        .unwrap(),
    )
}

fn mask(names: &[&str]) -> Arc<[String]> {
    names
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .into()
}

/// A column definition of `app.customers.<name>`.
fn column(name: &str, t: ColumnType, charset: u16) -> Vec<u8> {
    let mut v = Vec::new();
    Column::new(t)
        .with_schema(b"app")
        .with_table(b"c")
        .with_org_table(b"customers")
        .with_name(name.as_bytes())
        .with_org_name(name.as_bytes())
        .with_character_set(charset)
        .with_column_length(255)
        .serialize(&mut v);
    v
}

fn text_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut v = Vec::new();
    for val in values {
        codec::put_text_cell(&mut v, *val);
    }
    v
}

/// Physical packets of a server answer, numbered from 1.
fn answer(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut seq = 1;
    for p in payloads {
        codec::put_packet(&mut out, &mut seq, p);
    }
    out.to_vec()
}

fn eof(status: u16) -> Vec<u8> {
    let mut v = vec![0xfe, 0, 0];
    v.extend_from_slice(&status.to_le_bytes());
    v
}

fn ok_terminator(status: u16) -> Vec<u8> {
    let mut v = vec![0xfe, 0, 0];
    v.extend_from_slice(&status.to_le_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

/// Feeds `bytes` to the relay `chunk` bytes at a time; returns what the client got (as
/// logical packets, with their sequence ids checked) and whether the answer ended.
fn relay(
    relay: &mut Relay<'_>,
    resp: &mut Response,
    bytes: &[u8],
    chunk: usize,
) -> (Vec<Vec<u8>>, bool) {
    let mut buf = BytesMut::new();
    let mut sent = Vec::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        let mut out = BytesMut::new();
        let fed = relay.feed(resp, &mut buf, &mut out).unwrap();
        out.extend_from_slice(&buf[fed.run..fed.pos]);
        sent.extend_from_slice(&out);
        let _ = buf.split_to(fed.pos);
        if resp.done() {
            break;
        }
    }
    let mut packets = Vec::new();
    let mut rest = &sent[..];
    let mut expect = 1u8;
    while !rest.is_empty() {
        let p = codec::check_packet(rest, 1 << 30, "test").unwrap().unwrap();
        assert_eq!(p.first_seq, expect, "client packets numbered in order");
        expect = p.last_seq.wrapping_add(1);
        packets.push(p.payload(rest).into_owned());
        rest = &rest[p.total..];
    }
    (packets, resp.done())
}

fn text(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

#[test]
fn text_rows_masked_with_old_eof_and_with_deprecate_eof() {
    for deprecate in [false, true] {
        let metrics = Metrics::new();
        let mut r = Relay::new(masker(), &metrics, deprecate);
        let cols = [
            column("id", ColumnType::MYSQL_TYPE_LONG, 63),
            column("email", ColumnType::MYSQL_TYPE_VAR_STRING, 45),
            column("note", ColumnType::MYSQL_TYPE_BLOB, 45),
        ];
        let mut payloads = vec![vec![3]];
        payloads.extend(cols.iter().cloned());
        if !deprecate {
            payloads.push(eof(2));
        }
        payloads.push(text_row(&[
            Some(b"1"),
            Some(b"ada@example.com"),
            Some(b"mail bob@example.org"),
        ]));
        payloads.push(text_row(&[Some(b"2"), None, Some(b"nothing here")]));
        payloads.push(if deprecate { ok_terminator(2) } else { eof(2) });
        for chunk in [1, 7, 4096] {
            let mut resp = Response::new(Kind::Text, mask(&["email-col", "mail"]), 0);
            let (got, done) = relay(&mut r, &mut resp, &answer(&payloads), chunk);
            assert!(done, "{deprecate} {chunk}");
            assert_eq!(got.len(), payloads.len(), "{deprecate} {chunk}");
            let first_row = if deprecate { 4 } else { 5 };
            let row = text(&got[first_row]);
            assert!(
                !row.contains("ada@example.com") && !row.contains("bob@example.org"),
                "{row}"
            );
            assert!(row.contains(REDACTED_TEXT), "{row}");
            assert_eq!(
                got[first_row + 1],
                payloads[first_row + 1],
                "unchanged rows pass as they are"
            );
            assert_eq!(resp.totals.rows, 2);
            let counts: Vec<(String, u32)> = resp
                .totals
                .masked
                .iter()
                .map(|(rule, n)| (r.rule_name(rule).to_string(), n))
                .collect();
            assert_eq!(
                counts,
                [("email-col".to_string(), 1), ("mail".to_string(), 1)]
            );
        }
    }
}

const REDACTED_TEXT: &str = "[REDACTED]";

#[test]
fn a_whole_masked_date_is_announced_as_a_string() {
    let metrics = Metrics::new();
    let mut r = Relay::new(masker(), &metrics, true);
    let payloads = vec![
        vec![1],
        column("since", ColumnType::MYSQL_TYPE_DATE, 63),
        text_row(&[Some(b"2020-01-01")]),
        ok_terminator(2),
    ];
    let mut resp = Response::new(Kind::Text, mask(&["since"]), 0);
    let (got, _) = relay(&mut r, &mut resp, &answer(&payloads), 4096);
    let announced: Column = ParseBuf(&got[1]).parse(()).unwrap();
    assert_eq!(announced.column_type(), ColumnType::MYSQL_TYPE_VAR_STRING);
    assert_eq!(announced.org_name_ref(), b"since");
    assert_eq!(text(&got[2]), format!("\u{a}{REDACTED_TEXT}"));
}

#[test]
fn rows_longer_than_a_packet_stream_through_or_are_masked_whole() {
    // A 20 MiB value: two full physical packets and a third.
    let big = {
        let mut v = vec![b'x'; 20 << 20];
        v.extend_from_slice(b" reach me at eve@example.net");
        v
    };
    let payloads = vec![
        vec![1],
        column("note", ColumnType::MYSQL_TYPE_LONG_BLOB, 45),
        text_row(&[Some(&big)]),
        ok_terminator(2),
    ];
    let bytes = answer(&payloads);
    let metrics = Metrics::new();
    let mut r = Relay::new(masker(), &metrics, true);
    // Unmasked: streamed in 64 KiB reads, byte for byte.
    let mut resp = Response::new(Kind::Text, mask(&[]), 0);
    let (got, done) = relay(&mut r, &mut resp, &bytes, 64 << 10);
    assert!(done);
    assert_eq!(got[2].len(), payloads[2].len());
    assert_eq!(resp.totals.rows, 1);
    // Masked: held whole, rewritten, split again and renumbered.
    let mut resp = Response::new(Kind::Text, mask(&["mail"]), 0);
    let (got, done) = relay(&mut r, &mut resp, &bytes, 64 << 10);
    assert!(done);
    let row = &got[2];
    assert!(row.len() > 20 << 20);
    assert!(!row.windows(15).any(|w| w == b"eve@example.net"));
    assert!(row.ends_with(format!(" reach me at {REDACTED_TEXT}").as_bytes()));
}

#[test]
fn binary_rows_masked_and_nulled_by_the_bitmap() {
    let metrics = Metrics::new();
    let mut r = Relay::new(masker(), &metrics, true);
    let cols = vec![
        column("id", ColumnType::MYSQL_TYPE_LONGLONG, 63),
        column("email", ColumnType::MYSQL_TYPE_VAR_STRING, 45),
        column("secret_id", ColumnType::MYSQL_TYPE_VAR_STRING, 45),
        column("since", ColumnType::MYSQL_TYPE_DATE, 63),
    ];
    // 0x00, bitmap (4 columns + 2 bits offset: one byte; `since` NULL), values.
    let mut row = vec![0x00, 1 << (3 + 2)];
    row.extend_from_slice(&7i64.to_le_bytes());
    codec::put_lenenc_bytes(&mut row, b"ada@example.com");
    codec::put_lenenc_bytes(&mut row, b"S-123");
    let mut payloads = vec![vec![4]];
    payloads.extend(cols);
    payloads.push(row);
    payloads.push(ok_terminator(2));
    let mut resp = Response::new(Kind::Binary, mask(&["email-col", "id-null"]), 0);
    let (got, done) = relay(&mut r, &mut resp, &answer(&payloads), 3);
    assert!(done);
    let out = &got[5];
    // id untouched, email redacted, secret_id now NULL (bit 2+2), since still NULL.
    assert_eq!(out[1], (1 << 5) | (1 << 4));
    assert_eq!(&out[2..10], &7i64.to_le_bytes());
    let (v, used) = codec::read_lenenc_bytes(&out[10..]).unwrap();
    assert_eq!(v, REDACTED_TEXT.as_bytes());
    assert_eq!(out.len(), 10 + used, "the nulled value is gone");
}

#[test]
fn a_result_that_cannot_be_masked_is_refused_not_sent() {
    let metrics = Metrics::new();
    let mut r = Relay::new(masker(), &metrics, false);
    // A column rule on a binary DATE cannot be written as a date: refused.
    let payloads = vec![
        vec![1],
        column("since", ColumnType::MYSQL_TYPE_DATE, 63),
        eof(2),
        vec![0x00, 0x00, 4, 0xe4, 0x07, 1, 1],
        eof(2),
    ];
    let mut resp = Response::new(Kind::Binary, mask(&["since"]), 0);
    let (got, done) = relay(&mut r, &mut resp, &answer(&payloads), 4096);
    assert!(done, "the rest of the answer is consumed");
    assert_eq!(got.len(), 1, "one ERR and nothing else: {got:?}");
    let e = codec::parse_err(&got[0]).unwrap();
    assert_eq!(e.code, errno::QUERY_INTERRUPTED);
    assert!(e.message.contains("masking"), "{e:?}");
}

#[test]
fn several_result_sets_and_oks_end_at_the_last() {
    let metrics = Metrics::new();
    let mut r = Relay::new(masker(), &metrics, true);
    let more = codec::status::MORE_RESULTS_EXISTS | 2;
    let mut ok_more = vec![0x00, 1, 0];
    ok_more.extend_from_slice(&more.to_le_bytes());
    ok_more.extend_from_slice(&[0, 0]);
    let payloads = vec![
        vec![1],
        column("email", ColumnType::MYSQL_TYPE_VAR_STRING, 45),
        text_row(&[Some(b"x@example.com")]),
        ok_terminator(more),
        ok_more,
        vec![
            0xff, 0x7a, 0x04, b'#', b'4', b'2', b'S', b'0', b'2', b'n', b'o',
        ],
    ];
    let mut resp = Response::new(Kind::Text, mask(&["email-col"]), 0);
    let (got, done) = relay(&mut r, &mut resp, &answer(&payloads), 5);
    assert!(done);
    assert_eq!(got.len(), payloads.len());
    assert!(!text(&got[2]).contains("x@example.com"));
    assert_eq!(resp.totals.affected, Some(1));
    assert!(
        resp.totals
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no"))
    );
    // Nothing after the end is taken.
    let mut resp = Response::new(Kind::Single, mask(&[]), 0);
    let mut buf = BytesMut::from(&answer(&[OK_PAYLOAD.to_vec(), OK_PAYLOAD.to_vec()])[..]);
    let mut out = BytesMut::new();
    let fed = r.feed(&mut resp, &mut buf, &mut out).unwrap();
    assert!(resp.done());
    assert_eq!(fed.pos, 4 + OK_PAYLOAD.len());
}

const OK_PAYLOAD: &[u8] = &[0, 0, 0, 2, 0, 0, 0];

#[test]
fn prepare_answers_record_the_statement() {
    let metrics = Metrics::new();
    for deprecate in [false, true] {
        let mut r = Relay::new(masker(), &metrics, deprecate);
        // Statement 9, 1 column, 2 parameters.
        let mut payloads = vec![vec![0x00, 9, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0]];
        payloads.push(column("?", ColumnType::MYSQL_TYPE_VAR_STRING, 63));
        payloads.push(column("?", ColumnType::MYSQL_TYPE_VAR_STRING, 63));
        if !deprecate {
            payloads.push(eof(2));
        }
        payloads.push(column("email", ColumnType::MYSQL_TYPE_VAR_STRING, 45));
        if !deprecate {
            payloads.push(eof(2));
        }
        let mut resp = Response::new(Kind::Prepare, mask(&[]), 0);
        let (got, done) = relay(&mut r, &mut resp, &answer(&payloads), 2);
        assert!(done, "{deprecate}");
        assert_eq!(got, payloads);
        assert_eq!(
            resp.prepared,
            Some(Prepared {
                statement: 9,
                columns: 1,
                params: 2
            })
        );
    }
}

#[test]
fn a_local_infile_request_ends_the_session() {
    let metrics = Metrics::new();
    let mut r = Relay::new(masker(), &metrics, true);
    let mut resp = Response::new(Kind::Text, mask(&[]), 0);
    let mut buf = BytesMut::from(&answer(&[b"\xfb/etc/passwd".to_vec()])[..]);
    let mut out = BytesMut::new();
    assert!(r.feed(&mut resp, &mut buf, &mut out).is_err());
}

#[test]
fn server_messages_lose_quoted_values_when_the_command_touched_a_masked_column() {
    let m = masker();
    let active = mask(&["email-col", "mail"]);
    let cut = |touched, text| mask_message(&m, &active, touched, text).into_owned();
    assert_eq!(
        cut(true, "Truncated incorrect DECIMAL value: 'K7-alpha-19'"),
        "Truncated incorrect DECIMAL value: '[REDACTED]'"
    );
    assert_eq!(
        cut(
            true,
            "Incorrect datetime value: 'x' for column `app`.`customers`.`email` at row 1"
        ),
        "Incorrect datetime value: '[REDACTED]' for column `app`.`customers`.`email` at row 1"
    );
    // A quote inside the value: cut to the last quote (the key's name goes too).
    assert_eq!(
        cut(true, "Duplicate entry 'it's here' for key 'PRIMARY'"),
        "Duplicate entry '[REDACTED]'"
    );
    assert_eq!(
        cut(true, "Regex error 'unclosed"),
        "Regex error '[REDACTED]"
    );
    // Not touched: the message stays, but the detectors still run.
    assert_eq!(
        cut(false, "Duplicate entry 'K7' for key 'PRIMARY'"),
        "Duplicate entry 'K7' for key 'PRIMARY'"
    );
    assert_eq!(
        cut(false, "Duplicate entry 'ada@example.com' for key 'email'"),
        "Duplicate entry '[REDACTED]' for key 'email'"
    );
    let row = text_row(&[
        Some(b"Warning"),
        Some(b"1292"),
        Some(b"Truncated incorrect DECIMAL value: 'K7-alpha-19'"),
    ]);
    let masked = mask_warning_row(&m, &active, &row).unwrap();
    assert_eq!(
        masked,
        text_row(&[
            Some(b"Warning"),
            Some(b"1292"),
            Some(b"Truncated incorrect DECIMAL value: '[REDACTED]'"),
        ])
    );
    assert!(mask_warning_row(&m, &active, &text_row(&[Some(b"x")])).is_none());
}

#[test]
fn affected_rows_of_several_oks_saturate_instead_of_overflowing() {
    // Two OKs of a multi-statement answer, the first claiming u64::MAX affected rows (an
    // 8-byte length-encoded integer): their sum used to overflow.
    let metrics = Metrics::new();
    let mut r = Relay::new(masker(), &metrics, true);
    let more = codec::status::MORE_RESULTS_EXISTS | 2;
    let mut huge = vec![0x00, 0xfe];
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    huge.push(0);
    huge.extend_from_slice(&more.to_le_bytes());
    huge.extend_from_slice(&[0, 0]);
    let last = vec![0x00, 5, 0, 2, 0, 0, 0];
    let mut resp = Response::new(Kind::Text, mask(&[]), 0);
    let (got, done) = relay(&mut r, &mut resp, &answer(&[huge, last]), 7);
    assert!(done);
    assert_eq!(got.len(), 2);
    assert_eq!(resp.totals.affected, Some(u64::MAX));
}
