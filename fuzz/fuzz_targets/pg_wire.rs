//! Fuzz the PostgreSQL wire parsers the gateway runs on untrusted bytes: the startup packet
//! (first bytes a client sends), message framing, ErrorResponse fields, and the masking of the
//! server's rows (DataRow, COPY text and CSV) over columns of every kind, in text and binary.
//! None may panic; framing must never claim more than it was given.
#![no_main]

use airlock::config::policy::{Detector, MaskRuleSpec, MaskStyle};
use airlock::mask::{ColumnPlan, ColumnRef, Masker, ValueFormat, ValueKind};
use airlock::protocol::postgres::{codec, rows, startup};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// A plan over five columns of every kind masking treats differently (a column rule, JSON,
/// detectors on text, bytes and a fixed type), in text or binary format by `binary`.
fn masked(binary: u8) -> ColumnPlan {
    let rule = |name: &str, columns: Vec<String>, json_paths: Vec<String>, detectors, style| {
        MaskRuleSpec {
            name: name.into(),
            columns,
            json_paths,
            detectors,
            style,
            except_groups: vec![],
            computed: Default::default(),
            compared: Default::default(),
        }
    };
    static MASKER: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();
    // Built once: a masker derives its keys, which would otherwise dominate each run.
    let masker = MASKER.get_or_init(|| {
        Masker::new(
            &[
                rule(
                    "col",
                    vec!["*.*.email".into()],
                    vec![],
                    vec![],
                    MaskStyle::Partial,
                ),
                rule(
                    "doc",
                    vec![],
                    vec!["$..secret".into()],
                    vec![],
                    MaskStyle::Hash,
                ),
                rule(
                    "pii",
                    vec![],
                    vec![],
                    vec![Detector::Email, Detector::Card],
                    MaskStyle::Redact,
                ),
            ],
            b"fuzz-key-0123456789abcdef0123456789",
        )
        .expect("rules")
    });
    let kinds = [
        ("email", ValueKind::Text),
        ("doc", ValueKind::Json { binary_prefix: 1 }),
        ("note", ValueKind::Other),
        ("blob", ValueKind::Bytes),
        ("n", ValueKind::Plain),
    ];
    let cols: Vec<ColumnRef<'_>> = kinds
        .iter()
        .enumerate()
        .map(|(i, &(column, kind))| ColumnRef {
            schema: "public",
            table: "t",
            column,
            kind,
            type_id: 25,
            format: if binary & (1 << i) != 0 {
                ValueFormat::Binary
            } else {
                ValueFormat::Text
            },
        })
        .collect();
    let active = ["col".to_string(), "doc".into(), "pii".into()];
    masker.plan(&cols, &active).expect("plan")
}

fuzz_target!(|data: &[u8]| {
    let _ = startup::parse_packet(data);
    // Walk the input as a stream of tagged messages, as the session loop does.
    let mut rest = data;
    let mut plan = None;
    while let Ok(Some(h)) = codec::peek_header(rest) {
        assert!(h.total >= 5, "a header is five bytes");
        // The client-side check on the header alone: a refused header is never buffered, an
        // accepted one is within its type's cap.
        match codec::check_frontend(h, 1 << 20) {
            Ok(()) => {
                let cap = codec::frontend_cap(h.tag, 1 << 20).expect("accepted types have a cap");
                assert!(h.total <= cap);
            }
            Err(_) => break,
        }
        if h.total > rest.len() {
            break;
        }
        let body = &rest[5..h.total];
        if h.tag == b'E' || h.tag == b'N' {
            let _ = codec::parse_error(body);
        }
        // Rows of the server's answer, masked (DataRow, COPY text and CSV): all or nothing,
        // never a panic.
        if let b'D' | b'd' = h.tag {
            let plan = plan.get_or_insert_with(|| masked(data[0]));
            let mut out = BytesMut::new();
            let _ = match h.tag {
                b'D' => rows::mask_data_row(plan, body, &mut out),
                _ if data[0] & 0x80 != 0 => {
                    rows::mask_copy_csv(plan, body, rows::CsvOptions::default(), &mut out)
                }
                _ => rows::mask_copy_data(plan, body, &mut out),
            };
        }
        rest = &rest[h.total..];
    }
});
