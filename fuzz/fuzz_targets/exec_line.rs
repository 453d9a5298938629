//! Fuzz the command-line splitter policy judges SSH exec requests with (and the Kubernetes and
//! HTTP request parsers `policy explain` uses): arbitrary text never panics, and a line that
//! splits yields non-empty parts whose programs are the facts' programs. The same bytes go to
//! the SSH gateway's reader of a client's KEXINIT: no panic, and a packet's verdict does not
//! change with the bytes after it.
#![no_main]

use airlock::model::Class;
use airlock::policy::{exec, http, kube};
use airlock::protocol::ssh::offer::{Kexinit, read_kexinit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kexinit = read_kexinit(data);
    if kexinit != Kexinit::Partial {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"SSH-2.0-more");
        assert_eq!(read_kexinit(&longer), kexinit);
    }
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
