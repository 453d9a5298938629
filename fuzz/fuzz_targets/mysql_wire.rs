//! Fuzz the MySQL wire parsers the gateway runs on untrusted bytes: packet framing (split
//! packets, sequence ids, limits), the server greeting and the client's handshake response,
//! execute parameters, KILL statements, and the answer relay (result sets in the text and
//! binary protocols, masked, fed in two pieces). None may panic; framing never claims more than
//! it was given; the relay never consumes past its buffer.
#![no_main]

use std::sync::Arc;

use airlock::config::policy::{Detector, MaskRuleSpec, MaskStyle};
use airlock::mask::Masker;
use airlock::metrics::Metrics;
use airlock::protocol::mysql::results::{Kind, Relay, Response};
use airlock::protocol::mysql::{cancel, codec, handshake, params};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mysql_common::io::ParseBuf;
use mysql_common::packets::HandshakeResponse;

/// Built once: a masker derives its keys, which would otherwise dominate each run.
fn masker() -> Arc<Masker> {
    static MASKER: std::sync::OnceLock<Arc<Masker>> = std::sync::OnceLock::new();
    Arc::clone(MASKER.get_or_init(build_masker))
}

fn build_masker() -> Arc<Masker> {
    let rule = |name: &str, columns: Vec<String>, detectors: Vec<Detector>, style| MaskRuleSpec {
        name: name.into(),
        columns,
        json_paths: vec![],
        detectors,
        style,
        except_groups: vec![],
        computed: Default::default(),
        compared: Default::default(),
    };
    Arc::new(
        Masker::new(
            &[
                rule("col", vec!["*.*.email".into()], vec![], MaskStyle::Partial),
                rule("mail", vec![], vec![Detector::Email], MaskStyle::Redact),
                rule("nul", vec!["*.*.secret".into()], vec![], MaskStyle::Null),
            ],
            b"fuzz-key-0123456789abcdef0123456789",
        )
        .expect("rules"),
    )
}

fuzz_target!(|data: &[u8]| {
    // Framing: a stream of logical packets.
    let mut rest = data;
    while let Ok(Some(p)) = codec::check_packet(rest, 1 << 20, "fuzz") {
        assert!(p.total <= rest.len() && p.total >= codec::HEADER_LEN);
        let payload = p.payload(rest);
        assert_eq!(payload.len(), p.len);
        let _ = handshake::ServerHello::parse(&payload);
        // The client's handshake response, parsed as the gateway's accept does.
        let _: Result<HandshakeResponse<'_>, _> = ParseBuf(&payload).parse(());
        let _ = codec::parse_err(&payload);
        let _ = codec::ok_status(&payload);
        if let Some(&n) = payload.first() {
            let _ = params::render(&payload[1..], u16::from(n % 8), &payload);
            let _ = params::new_types(&payload[1..], u16::from(n % 8));
        }
        rest = &rest[p.total..];
    }
    let _ = cancel::parse_kill(&String::from_utf8_lossy(data));
    let _ = handshake::unsafe_charset(u16::from_le_bytes([
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
    ]));

    // The relay: an answer of each kind, masked, in two pieces.
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let kind = match sel % 6 {
        0 => Kind::Text,
        1 => Kind::Binary,
        2 => Kind::Prepare,
        3 => Kind::FieldList,
        4 => Kind::Fetch,
        _ => Kind::Single,
    };
    // Built once, like the masker: a registry per run would dominate it.
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    let metrics = METRICS.get_or_init(Metrics::new);
    let mut relay = Relay::new(masker(), metrics, sel & 0x80 != 0);
    let rules: Arc<[String]> = if sel & 0x40 != 0 {
        vec!["col".to_string(), "mail".into(), "nul".into()].into()
    } else {
        Vec::new().into()
    };
    let mut resp = Response::new(kind, rules, 0);
    let cut = body.len() / 2;
    let mut buf = BytesMut::new();
    for piece in [&body[..cut], &body[cut..]] {
        buf.extend_from_slice(piece);
        let mut out = BytesMut::new();
        match relay.feed(&mut resp, &mut buf, &mut out) {
            Ok(fed) => {
                assert!(fed.run <= fed.pos && fed.pos <= buf.len());
                let _ = buf.split_to(fed.pos);
            }
            Err(_) => return,
        }
        if resp.done() {
            return;
        }
    }
});
