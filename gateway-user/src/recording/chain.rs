//! The hash chain: each line is `{"hash":H,"prev_hash":P,"event":E}` where
//! `H = SHA-256(P ‖ "\n" ‖ E)` over the exact bytes of `E` as written, and
//! `P` is the previous line's `H` (64 zeros for the first). Hashing the
//! bytes on disk, not a re-serialisation, leaves nothing to canonicalise.
use sha2::{Digest, Sha256};

/// `prev_hash` of a session's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HEAD: &[u8] = b"{\"hash\":\"";
const MID: &[u8] = b"\",\"prev_hash\":\"";
const TAIL: &[u8] = b"\",\"event\":";

/// The hash of `event` chained after `prev`.
pub fn hash(prev: &str, event: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(event);
    // By hand: hex::encode goes through a char iterator, which showed in
    // the writer's profile.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Appends the line of `event` (with its newline) to `out`, straight into
/// the writer's batch; returns its hash.
pub fn append_line(out: &mut Vec<u8>, prev: &str, event: &[u8]) -> String {
    let hash = hash(prev, event);
    append(out, &hash, prev, event);
    hash
}

/// A line from its parts as stored (the fleet table), unchecked.
pub fn assemble(hash: &str, prev: &str, event: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len() + 170);
    append(&mut out, hash, prev, event);
    out
}

fn append(out: &mut Vec<u8>, hash: &str, prev: &str, event: &[u8]) {
    out.reserve(event.len() + 170);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(MID);
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(TAIL);
    out.extend_from_slice(event);
    out.extend_from_slice(b"}\n");
}

/// A line taken apart: `(hash, prev_hash, event bytes)`.
pub fn split(line: &[u8]) -> Result<(&str, &str, &[u8]), &'static str> {
    let rest = line.strip_prefix(HEAD).ok_or("not a recording line")?;
    let (hash, rest) = hex64(rest)?;
    let rest = rest.strip_prefix(MID).ok_or("not a recording line")?;
    let (prev, rest) = hex64(rest)?;
    let rest = rest.strip_prefix(TAIL).ok_or("not a recording line")?;
    let event = rest.strip_suffix(b"}").ok_or("the line is cut short")?;
    Ok((hash, prev, event))
}

/// Whether `text` is a hash as this chain writes it: 64 lowercase hex digits.
pub fn is_hash(text: &str) -> bool {
    text.len() == 64 && is_lower_hex(text.as_bytes())
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn hex64(bytes: &[u8]) -> Result<(&str, &[u8]), &'static str> {
    let (hash, rest) = bytes.split_at_checked(64).ok_or("the line is cut short")?;
    if !is_lower_hex(hash) {
        return Err("a hash is not 64 lowercase hex digits");
    }
    // Checked ASCII just above.
    let hash = std::str::from_utf8(hash).map_err(|_| "a hash is not hex")?;
    Ok((hash, rest))
}
