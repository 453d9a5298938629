//! Fuzz SQL classification: it must never crash (panic, stack overflow, runaway memory) and
//! its fail-closed invariants must hold for any input.
#![no_main]

use airlock::model::{Class, Dialect};
use airlock::policy::{Limits, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let c = classify(sql, dialect, &limits);
        // The riskiest class is the maximum over the statements.
        let max = c.statement_classes.iter().copied().max();
        if let Some(m) = max {
            assert!(
                c.class >= m,
                "{sql:?}: class {:?} < statement class {m:?}",
                c.class
            );
        }
        assert!(!c.kinds.is_empty(), "{sql:?}: no kind");
        // Whatever did not parse or tripped a limit is unknown, never read.
        let unparsed = c
            .kinds
            .iter()
            .any(|k| matches!(*k, "unparsed" | "too_long" | "too_complex"));
        if unparsed || c.limit.is_some() {
            assert_eq!(c.class, Class::Unknown, "{sql:?}");
        }
        // Any admin/escape function called makes the command at least a write.
        if c.functions
            .iter()
            .any(|f| f.starts_with("dblink") || f.starts_with("lo_"))
        {
            assert!(c.class >= Class::Write, "{sql:?}");
        }
    }
});
