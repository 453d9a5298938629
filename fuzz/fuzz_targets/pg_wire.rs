//! Fuzz the PostgreSQL wire parsers the gateway runs on untrusted bytes: the startup packet
//! (first bytes a client sends), message framing, ErrorResponse fields, and the masking
//! engine's DataRow parser. None may panic; framing must never claim more than it was given.
#![no_main]

use airlock::protocol::postgres::{codec, startup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = startup::parse_packet(data);
    // Walk the input as a stream of tagged messages, as the session loop does.
    let mut rest = data;
    while let Ok(Some(h)) = codec::peek_header(rest) {
        assert!(h.total >= 5, "a header is five bytes");
        if h.total > rest.len() {
            break;
        }
        let body = &rest[5..h.total];
        if h.tag == b'E' || h.tag == b'N' {
            let _ = codec::parse_error(body);
        }
        rest = &rest[h.total..];
    }
});
