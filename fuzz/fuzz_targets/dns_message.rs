//! Fuzzes the DNS forwarder's message handling: a job's query and an upstream's answer, from arbitrary bytes.
//!
//! Run: `cargo +nightly fuzz run dns_message` from `fuzz/`.
//!
//! Beyond "never panics": a query that parses has exactly one question,
//! and the refusal built for it parses back as an answer to that question.
#![no_main]

use chokepoint::protocols::dns::message::{parse_answer, parse_query, refusal};
use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((query, question)) = parse_query(data) {
        assert_eq!(query.queries().len(), 1);
        assert!(!question.name.ends_with('.'));
        let refused = refusal(&query, ResponseCode::Refused);
        let answer = parse_answer(&query, refused).expect("our refusal answers the query");
        assert!(answer.addresses.is_empty());
        // The same bytes as an upstream's answer to this query.
        let _ = parse_answer(&query, data.to_vec());
    }
    // Anything at all as an answer to a fixed query.
    let mut query = Message::new();
    query.set_id(u16::from_be_bytes([data.first().copied().unwrap_or(0), 0]));
    let _ = parse_answer(&query, data.to_vec());
});
