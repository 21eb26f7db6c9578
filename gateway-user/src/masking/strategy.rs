//! The masking strategies (redact, partial, hash) and how each rewrites a text value.
use std::{fmt, iter};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::MaskingError;

/// What a redacted value becomes.
pub const REDACTED: &str = "***";

/// Prefix of a hashed value, so a reader knows the value is a digest and not data.
pub const HASH_PREFIX: &str = "hash:";

/// How many hex characters of the HMAC a hashed value keeps: 64 bits is plenty
/// to join on or to tell values apart, and short enough to read in a log.
pub const HASH_HEX_CHARS: usize = 16;

/// `keep` of the `partial` strategy when the configuration gives none.
pub const DEFAULT_KEEP_LAST: usize = 4;

/// Shortest hash key [`super::MaskingPolicy::validate`] accepts when a rule hashes.
pub const MIN_HASH_KEY_LEN: usize = 16;

/// How a sensitive value is rewritten.
///
/// | config | text value `4111-1111` becomes |
/// |---|---|
/// | `"redact"` | `***` |
/// | `"partial"`, `keep = 4` | `*****1111` (characters, not bytes) |
/// | `"hash"` | `hash:` + 16 hex chars of HMAC-SHA256(key, value) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Replace the value with [`REDACTED`].
    Redact,
    /// Replace every character but the last `keep_last` with `*`; a value of
    /// `keep_last` characters or fewer becomes all `*`.
    Partial { keep_last: usize },
    /// Replace the value with a keyed digest: equal inputs give equal outputs
    /// across sessions and hosts sharing the key (so joins and counts still
    /// work), and without the key a digest cannot be brute-forced offline.
    Hash,
}

impl Strategy {
    /// Builds a strategy from its configuration name (`redact`, `partial`,
    /// `hash`) and the optional `keep` of `partial` (default
    /// [`DEFAULT_KEEP_LAST`]).
    pub fn from_config(name: &str, keep: Option<usize>) -> Result<Strategy, MaskingError> {
        match (name, keep) {
            ("partial", keep) => Ok(Strategy::Partial {
                keep_last: keep.unwrap_or(DEFAULT_KEEP_LAST),
            }),
            ("redact" | "hash", Some(_)) => Err(MaskingError::KeepNotAllowed(name.to_owned())),
            ("redact", None) => Ok(Strategy::Redact),
            ("hash", None) => Ok(Strategy::Hash),
            _ => Err(MaskingError::UnknownStrategy(name.to_owned())),
        }
    }

    /// Masks one text value with `hash_key` as the HMAC key; a convenience for
    /// callers outside result sets (logs, HTTP bodies). Invalid UTF-8 is
    /// replaced lossily first.
    pub fn mask_text(&self, value: &str, hash_key: &[u8]) -> String {
        let mut out = Vec::with_capacity(value.len());
        mask_into(*self, value.as_bytes(), &Hasher::new(hash_key), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Redact => f.write_str("redact"),
            Strategy::Partial { keep_last } => write!(f, "partial (keep {keep_last})"),
            Strategy::Hash => f.write_str("hash"),
        }
    }
}

/// The keyed HMAC state, set up once per plan: keying HMAC costs two SHA-256
/// compressions, so cloning a keyed state per value halves the work of short values.
#[derive(Clone)]
pub(crate) struct Hasher {
    keyed: Hmac<Sha256>,
}

impl Hasher {
    pub(crate) fn new(key: &[u8]) -> Hasher {
        // HMAC takes keys of any length (long ones are hashed first), so this
        // cannot fail; the fallback only keeps the code panic-free.
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        Hasher { keyed }
    }

    /// Appends `hash:` and the first [`HASH_HEX_CHARS`] hex chars of the HMAC.
    pub(crate) fn hash_into(&self, value: &[u8], out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut mac = self.keyed.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        out.extend_from_slice(HASH_PREFIX.as_bytes());
        for byte in &digest[..HASH_HEX_CHARS / 2] {
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0x0f)]);
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.write_str("Hasher(..)")
    }
}

/// Appends the masked form of the text `value` to `out`.
pub(crate) fn mask_into(strategy: Strategy, value: &[u8], hasher: &Hasher, out: &mut Vec<u8>) {
    match strategy {
        Strategy::Redact => out.extend_from_slice(REDACTED.as_bytes()),
        Strategy::Partial { keep_last } => partial_into(value, keep_last, out),
        Strategy::Hash => hasher.hash_into(value, out),
    }
}

/// Appends `value` with all but its last `keep` characters replaced by `*`.
///
/// Counting characters keeps multi-byte text valid UTF-8. A value that is not
/// UTF-8 (the session should pin `client_encoding` to UTF8, so this should
/// not happen) becomes all `*`: keeping a byte tail could split a character of an
/// unknown encoding.
fn partial_into(value: &[u8], keep: usize, out: &mut Vec<u8>) {
    // Most masked values are ASCII (emails, ids, numbers): one character
    // per byte, so no decoding and no counting.
    if value.is_ascii() {
        if value.len() <= keep {
            stars(value.len(), out);
        } else {
            let cut = value.len() - keep;
            stars(cut, out);
            out.extend_from_slice(&value[cut..]);
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        stars(value.len(), out);
        return;
    };
    let total = text.chars().count();
    if total <= keep {
        stars(total, out);
        return;
    }
    let cut = match keep {
        0 => text.len(),
        _ => text
            .char_indices()
            .rev()
            .nth(keep - 1)
            .map_or(0, |(at, _)| at),
    };
    stars(total - keep, out);
    out.extend_from_slice(&value[cut..]);
}

fn stars(n: usize, out: &mut Vec<u8>) {
    out.extend(iter::repeat_n(b'*', n));
}

/// Appends `text` as a JSON string literal, so a masked json/jsonb value is
/// still a JSON document. Invalid UTF-8 is replaced lossily: JSON must be UTF-8.
pub(crate) fn json_string_into(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for ch in String::from_utf8_lossy(text).chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if u32::from(c) < 0x20 => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0x0f)]);
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}
