//! The rows a `result` event keeps: captured as wire bytes on the session's path, written out as text by the recorder.
//!
//! Why not strings from the start: a 100-row result is 100 × columns small
//! `String`s made on the session's thread and freed on the writer's, which
//! cost more than forwarding the rows (glibc's allocator pays extra for
//! frees from another thread). A [`Sample`] is instead one buffer per
//! statement holding each row the way a DataRow body does (a 16-bit count,
//! then a 32-bit length, -1 for NULL, and the bytes of every value); the
//! recorder turns it into JSON text when it writes the event.
//!
//! In JSON a sample is an array of rows, each an array of values: `null`, the
//! value as a string when it is printable UTF-8 (tab, newline and carriage
//! return allowed), else `\x` and its hex digits. Reading a recording back
//! keeps each string's bytes, so writing it again gives the same JSON.
//!
//! ```
//! use chokepoint::recording::sample::Sample;
//!
//! let mut sample = Sample::default();
//! sample.push_row([Some(&b"1"[..]), None, Some(&b"\x00\x01"[..])].into_iter());
//! assert_eq!(serde_json::to_string(&sample).unwrap(), r#"[["1",null,"\\x0001"]]"#);
//! let back: Sample = serde_json::from_str(r#"[["1",null,"\\x0001"]]"#).unwrap();
//! assert_eq!(back, sample);
//! assert_eq!(back.rows()[0][2].as_deref(), Some("\\x0001"));
//! ```
use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    ser::{SerializeSeq, SerializeTuple},
};

/// Rows as the client received them (see the module documentation).
#[derive(Clone, Default)]
pub struct Sample {
    rows: usize,
    wire: BytesMut,
    /// A row did not fit [`Sample::MAX_BYTES`]: no later row is kept either.
    full: bool,
}

impl Sample {
    /// What one sample keeps at most, values and their lengths: rows are
    /// kept whole or not at all, in order, so a result of huge values
    /// (`SELECT repeat('x', 1e8) FROM …`) does not sit in memory and the
    /// recording once per statement.
    pub const MAX_BYTES: usize = 1 << 20;

    /// Appends one row, unless it would take the sample past
    /// [`MAX_BYTES`](Self::MAX_BYTES) (then neither it nor any later row is
    /// kept). A row of more than 65,535 values or a value over 2 GiB
    /// (neither fits a DataRow) is kept truncated rather than refused.
    pub fn push_row<'v>(&mut self, values: impl ExactSizeIterator<Item = Option<&'v [u8]>>) {
        self.push_row_within(values, Self::MAX_BYTES);
    }

    /// [`push_row`](Self::push_row) up to `limit` bytes.
    fn push_row_within<'v>(
        &mut self,
        values: impl ExactSizeIterator<Item = Option<&'v [u8]>>,
        limit: usize,
    ) {
        if self.full {
            return;
        }
        let start = self.wire.len();
        let count = u16::try_from(values.len()).unwrap_or(u16::MAX);
        self.wire.put_u16(count);
        for value in values.take(usize::from(count)) {
            let v = value.map(|v| &v[..v.len().min(i32::MAX as usize)]);
            if self.wire.len() + 4 + v.map_or(0, <[u8]>::len) > limit {
                // Whole rows or nothing, and nothing after a row left out.
                self.wire.truncate(start);
                self.full = true;
                return;
            }
            match v {
                None => self.wire.put_i32(-1),
                Some(v) => {
                    self.wire.put_i32(v.len() as i32);
                    self.wire.put_slice(v);
                }
            }
        }
        self.rows += 1;
    }

    /// Bytes the kept rows take.
    pub fn byte_len(&self) -> usize {
        self.wire.len()
    }

    /// Number of rows kept.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is kept.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Forgets every row, keeping the buffer.
    pub fn clear(&mut self) {
        self.rows = 0;
        self.wire.clear();
        self.full = false;
    }

    /// The rows as text, as the recording shows them.
    pub fn rows(&self) -> Vec<Vec<Option<String>>> {
        self.iter()
            .map(|row| row.map(|v| v.map(|v| Text(v).to_string())).collect())
            .collect()
    }

    fn iter(&self) -> impl Iterator<Item = Values<'_>> {
        let mut rest = &self.wire[..];
        std::iter::from_fn(move || {
            if rest.len() < 2 {
                return None;
            }
            let count = usize::from(rest.get_u16());
            let mut end = 0;
            let mut at = rest;
            // The buffer was written by `push_row`; the checks only keep a
            // logic error from turning into a panic.
            for _ in 0..count {
                let (len, tail) = at.split_first_chunk::<4>()?;
                let len = usize::try_from(i32::from_be_bytes(*len)).unwrap_or(0);
                at = tail.get(len..)?;
                end = rest.len() - at.len();
            }
            let row = Values {
                rest: &rest[..end],
                remaining: count,
            };
            rest = &rest[end..];
            Some(row)
        })
    }
}

/// One row's values.
#[derive(Clone)]
struct Values<'a> {
    rest: &'a [u8],
    remaining: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        match usize::try_from(i32::from_be_bytes(*len)) {
            Ok(len) => {
                let (value, rest) = rest.split_at_checked(len)?;
                self.rest = rest;
                Some(Some(value))
            }
            Err(_) => {
                self.rest = rest;
                Some(None)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Values<'_> {}

/// A value as the recording writes it.
struct Text<'a>(&'a [u8]);

impl Text<'_> {
    /// The value as text, unless it is not UTF-8 or holds a control
    /// character other than tab, newline and carriage return.
    fn printable(&self) -> Option<&str> {
        // Control characters (Unicode Cc) are U+0000–U+001F and U+007F–U+009F;
        // in UTF-8 the last ones are 0xC2 followed by 0x80–0x9F. A byte test
        // is exact, and much cheaper than decoding every character.
        let b = self.0;
        // Most recorded values are printable ASCII: one branch-free pass
        // the compiler vectorises settles them, valid UTF-8 included.
        if b.iter().fold(true, |ok, &c| ok & (0x20..0x7f).contains(&c)) {
            return std::str::from_utf8(b).ok();
        }
        let control = b.iter().enumerate().any(|(i, &c)| match c {
            b'\t' | b'\n' | b'\r' => false,
            0..0x20 | 0x7f => true,
            0xc2 => b.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)),
            _ => false,
        });
        if control {
            return None;
        }
        std::str::from_utf8(b).ok()
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.printable() {
            Some(s) => f.write_str(s),
            None => write!(f, "\\x{}", hex::encode(self.0)),
        }
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.printable() {
            Some(s) => serializer.serialize_str(s),
            None => serializer.collect_str(self),
        }
    }
}

struct Row<'a>(Values<'a>);

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let values = self.0.clone();
        let mut seq = serializer.serialize_tuple(values.len())?;
        for value in values {
            seq.serialize_element(&value.map(Text))?;
        }
        seq.end()
    }
}

impl Serialize for Sample {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.rows))?;
        for row in self.iter() {
            seq.serialize_element(&Row(row))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Sample {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rows = Vec::<Vec<Option<String>>>::deserialize(deserializer)?;
        Ok(Sample::from(rows))
    }
}

impl From<Vec<Vec<Option<String>>>> for Sample {
    fn from(rows: Vec<Vec<Option<String>>>) -> Self {
        let mut sample = Sample::default();
        for row in &rows {
            // Read back whole: the budget bounded what was captured, and
            // its text (binary values as `\x` hex) can be larger than that.
            sample.push_row_within(
                row.iter().map(|v| v.as_deref().map(str::as_bytes)),
                usize::MAX,
            );
        }
        sample
    }
}

/// Equal when the recording shows the same rows (a binary value and its
/// `\x` text read back from a file are equal).
impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows && self.rows() == other.rows()
    }
}

impl fmt::Debug for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.rows()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Sample;

    #[test]
    fn json_round_trips_and_matches_the_text_form() {
        let mut sample = Sample::default();
        sample.push_row([Some(&b"a\tb"[..]), None].into_iter());
        sample.push_row([].into_iter());
        sample.push_row([Some(&b"\xff"[..]), Some(&b"caf\xc3\xa9"[..])].into_iter());
        let json = serde_json::to_string(&sample).unwrap();
        assert_eq!(json, r#"[["a\tb",null],[],["\\xff","café"]]"#);
        let back: Sample = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert_eq!(
            back.rows(),
            vec![
                vec![Some("a\tb".to_owned()), None],
                vec![],
                vec![Some("\\xff".to_owned()), Some("café".to_owned())],
            ]
        );
        assert_eq!(back.len(), 3);
        assert_eq!(format!("{back:?}"), format!("{:?}", back.rows()));
    }

    #[test]
    fn rows_past_the_byte_budget_are_left_out_whole_and_in_order() {
        let big = vec![b'x'; Sample::MAX_BYTES / 3];
        let mut sample = Sample::default();
        sample.push_row([Some(&big[..])].into_iter());
        sample.push_row([Some(&b"small"[..]), Some(&big[..])].into_iter());
        // Would take it past the budget: left out, and so is every later row.
        sample.push_row([Some(&b"a"[..]), Some(&big[..]), Some(&big[..])].into_iter());
        sample.push_row([Some(&b"tiny"[..])].into_iter());
        assert_eq!(sample.len(), 2);
        let rows = sample.rows();
        assert_eq!(rows[1][0].as_deref(), Some("small"));
        assert!(serde_json::to_string(&sample).unwrap().len() < Sample::MAX_BYTES);
        // One value larger than the budget: no row at all.
        let mut huge = Sample::default();
        huge.push_row([Some(&vec![b'y'; Sample::MAX_BYTES + 1][..])].into_iter());
        assert!(huge.is_empty());
        huge.clear();
        huge.push_row([Some(&b"after clear"[..])].into_iter());
        assert_eq!(huge.len(), 1);
        // Read back from a recording, a sample is kept whole: binary values
        // as `\x` hex take twice their captured size.
        let hex = format!("\\x{}", "ab".repeat(Sample::MAX_BYTES / 3));
        let rows = vec![vec![Some(hex.clone())], vec![Some(hex)]];
        assert_eq!(Sample::from(rows).len(), 2);
    }

    #[test]
    fn exactly_the_control_characters_are_hex() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let mut buf = [0; 4];
            let value = c.encode_utf8(&mut buf).as_bytes();
            let printable = super::Text(value).printable().is_some();
            let expected = !c.is_control() || matches!(c, '\t' | '\n' | '\r');
            assert_eq!(printable, expected, "{c:?}");
        }
        assert!(super::Text(b"\xc2").printable().is_none(), "not UTF-8");
        // Longer values, on and off the all-ASCII shortcut.
        let text = |b: &'static [u8]| super::Text(b).printable().map(str::to_owned);
        assert_eq!(
            text(b"4111 1111 1111 1111"),
            Some("4111 1111 1111 1111".into())
        );
        assert_eq!(text(b"ends in DEL\x7f"), None);
        assert_eq!(text(b"caf\xc3\xa9 au lait"), Some("café au lait".into()));
        assert_eq!(text(b"line\x00 NUL"), None);
    }
}
