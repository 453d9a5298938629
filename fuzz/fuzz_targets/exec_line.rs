//! Fuzz the command-line splitter policy judges SSH exec requests with (and the Kubernetes and
//! HTTP request parsers `policy explain` uses): arbitrary text never panics, and a line that
//! splits yields non-empty parts whose programs are the facts' programs.
#![no_main]

use airlock::model::Class;
use airlock::policy::{exec, http, kube};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let facts = exec::classify(line);
    match exec::split(line) {
        Ok(split) => {
            assert!(!split.parts.is_empty());
            assert!(split.parts.iter().all(|p| !p.words.is_empty()));
            assert_eq!(facts.programs.len(), split.parts.len());
            assert_eq!(facts.class, Class::Admin);
        }
        Err(_) => assert_eq!(facts.class, Class::Unknown),
    }
    if let Some((a, b)) = line.split_once(' ') {
        let _ = kube::parse(a, b).map(|r| kube::classify(&r));
        let _ = http::parse(a, b).map(|r| http::classify(&r));
    }
});
