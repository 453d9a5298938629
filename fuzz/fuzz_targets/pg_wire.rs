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
        rest = &rest[h.total..];
    }
});
