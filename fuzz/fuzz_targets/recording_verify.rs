//! Fuzzes what `chokepoint sessions verify` reads from disk, where anyone
//! who can write the recordings directory may have put anything: a
//! recording, and the host's ledger (plain and compacted).
//!
//! Run: `cargo +nightly fuzz run recording_verify` from `fuzz/`. The seeds
//! are real files signed by the key below, so mutations start from lines
//! whose chain and signatures check out.
//!
//! Beyond "never panics": a verdict of sealed always comes with events
//! ending in a seal, and a ledger without a problem accounts for no more
//! bytes than it was given and never numbers its lines backwards.
#![no_main]

use chokepoint::recording::{
    Body,
    ledger::{Head, Ledger},
    verify::{Verdict, verify},
};
use libfuzzer_sys::fuzz_target;

/// The public key the seeds were signed with.
const SEED_KEY: &str = "f9093957c98a555a8a8a98c37503dc7cd9d673c4c0ca0de4108bf6c9559bca44";

fuzz_target!(|data: &[u8]| {
    let trusted = vec![SEED_KEY.to_owned()];
    let (verdict, events) = verify(data, &trusted);
    if matches!(verdict, Verdict::Sealed { .. }) {
        assert!(matches!(
            events.last().map(|e| &e.body),
            Some(Body::Seal { .. })
        ));
    }
    for signed_from in [0, u64::MAX] {
        let ledger = Ledger::check(data, &trusted, None, signed_from);
        assert!(ledger.valid_len <= data.len());
        assert!(ledger.lines >= ledger.first_seq);
        // Against a head taken from the input itself: wherever it points.
        let head = Head {
            seq: u64::from(data.first().copied().unwrap_or(0)),
            hash: ledger.last_hash.clone(),
            open: Default::default(),
        };
        let _ = Ledger::check(data, &trusted, Some(&head), signed_from);
    }
});
