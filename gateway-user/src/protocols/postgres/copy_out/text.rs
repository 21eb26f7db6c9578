//! COPY's text format: fields split by a delimiter (tab by default),
//! backslash escapes, NULL spelled `\N` (or the NULL option).
use std::borrow::Cow;

use super::Field;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    pub delimiter: u8,
    pub null: Vec<u8>,
    pub header: bool,
}

/// The fields of one row (without its newline).
pub fn split<'a>(row: &'a [u8], options: &TextOptions) -> Vec<Field<'a>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < row.len() {
        match row[i] {
            // The escaped byte is data, even when it is the delimiter.
            b'\\' => i += 2,
            b if b == options.delimiter => {
                fields.push(field(&row[start..i], options));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    fields.push(field(&row[start.min(row.len())..], options));
    fields
}

fn field<'a>(raw: &'a [u8], options: &TextOptions) -> Field<'a> {
    // NULL is recognised before de-escaping, as the server writes it.
    let value = (raw != options.null.as_slice()).then(|| unescape(raw));
    Field { raw, value }
}

fn unescape(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 == raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let next = raw[i + 1];
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u8;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d as u8;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value);
            }
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// Appends `value` escaped as the server would (`None`: the NULL string).
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
