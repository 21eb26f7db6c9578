//! Fuzzes the SQL classifier's summary fast path against the full parse.
//!
//! Run: `cargo +nightly fuzz run classify_paths` from `fuzz/` (`cargo xtask
//! fuzz` adds the seeds in `fuzz/seeds/` and the SQL dictionary `fuzz/sql.dict`).
//!
//! The fast path decides plain statements from pg_query's summary and reads
//! UPDATE/DELETE's WHERE from the text; whenever it answers, the answer must
//! be exactly the full parse's, or a policy could see a DELETE without WHERE
//! as a harmless one.
#![no_main]

use chokepoint::protocols::postgres::classify::fast_path_disagreement;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(difference) = fast_path_disagreement(sql) {
        panic!("{sql:?}\n{difference}");
    }
});
