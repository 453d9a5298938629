//! Fuzz the masking engine's streaming entry points with arbitrary bytes split into arbitrary
//! chunks: the text masker and the JSON masker never panic, hold back a bounded amount, and a
//! JSON document they accept comes out as JSON.
#![no_main]

use airlock::config::policy::{Detector, MaskRuleSpec, MaskStyle};
use airlock::mask::{Masker, text};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn masker() -> Masker {
    let rule = MaskRuleSpec {
        name: "all".into(),
        columns: Vec::new(),
        json_paths: vec!["$..secret".into(), "$.a[*].b".into()],
        detectors: vec![
            Detector::Email,
            Detector::Card,
            Detector::PrivateKey,
            Detector::Jwt,
            Detector::HighEntropy,
        ],
        style: MaskStyle::Partial,
        except_groups: Vec::new(),
        computed: Default::default(),
        compared: Default::default(),
    };
    Masker::new(&[rule], b"0123456789abcdef0123456789abcdef").expect("masker")
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let m = masker();
    let rules = vec!["all".to_owned()];
    let chunk = usize::from(split).max(1);
    let mut t = m.text(&rules).expect("text");
    let mut out = BytesMut::new();
    for c in rest.chunks(chunk) {
        t.feed(c, &mut out);
        assert!(t.held() <= text::MAX_HOLD + chunk, "held {}", t.held());
    }
    t.finish(&mut out);
    let mut j = m.json(&rules).expect("json");
    let mut out = BytesMut::new();
    let ok = rest
        .chunks(chunk)
        .try_for_each(|c| j.feed(c, &mut out))
        .and_then(|()| j.finish(&mut out));
    if ok.is_ok() && !rest.is_empty() {
        // Syntax only: RFC 8259 numbers have no range, so `Value` (f64) would refuse `1E999`.
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(&out).is_ok(),
            "accepted, but the output is not JSON"
        );
    }
});
