//! COPY's text format, one field at a time, byte for byte as PostgreSQL's
//! `CopyAttributeOutText` spells it (the session's encoding is UTF8, in
//! which no multibyte character holds an ASCII byte).
use super::options::TextOptions;

/// Appends `value` (`None`: SQL NULL) to `out`.
pub fn encode(value: Option<&[u8]>, options: &TextOptions, out: &mut Vec<u8>) {
    let Some(value) = value else {
        out.extend_from_slice(&options.null);
        return;
    };
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            8 => out.extend_from_slice(b"\\b"),
            12 => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            11 => out.extend_from_slice(b"\\v"),
            b if b == options.delimiter => out.extend_from_slice(&[b'\\', b]),
            b => out.push(b),
        }
    }
}
