//! Fuzz the Kubernetes exec stream decoders (WebSocket channels and SPDY/3.1): they must never
//! crash and their memory stays bounded, whatever either side sends. The first byte picks the
//! decoder and where the input splits into the client's and the target's bytes; later bytes
//! are fed in pieces of varying size, alternating sides.
#![no_main]

use airlock::protocol::http::classify::StreamDecoder;
use airlock::protocol::kube::stream::{SpdyStreams, WebSocketChannels};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut decoder: Box<dyn StreamDecoder> = if pick & 1 == 0 {
        Box::new(WebSocketChannels::default())
    } else {
        Box::new(SpdyStreams::new())
    };
    let step = usize::from(pick >> 1).max(1);
    let mut from_client = true;
    let mut events = 0usize;
    for chunk in rest.chunks(step) {
        if decoder
            .feed(from_client, chunk, &mut |_| events += 1)
            .is_err()
        {
            return;
        }
        from_client = !from_client;
    }
});
