//! DataRow (B 'D'): one result row, read in place and rebuilt only when masking changes it.
use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_nullable_value, write_message},
};

/// A validated DataRow borrowing its frame's body. Columns are read in
/// place by [`DataRow::columns`]; nothing is allocated per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRow<'a> {
    body: &'a Bytes,
    count: usize,
}

/// What a masking callback wants done with one column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnEdit<'v> {
    /// Leave the value as it is.
    Keep,
    /// Replace it (`None` makes it SQL NULL).
    Replace(Option<Cow<'v, [u8]>>),
}

impl<'a> DataRow<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'D';

    /// Validates the whole row once (count, every length, no trailing
    /// bytes) so that iterating columns afterwards cannot fail.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let count = r.count(4)?;
        for _ in 0..count {
            r.nullable_value()?;
        }
        r.finish()?;
        Ok(Self { body, count })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The column values in order, `None` for SQL NULL, as slices of the
    /// frame.
    pub fn columns(&self) -> Columns<'a> {
        Columns {
            rest: self.body.get(2..).unwrap_or_default(),
            remaining: self.count,
        }
    }

    /// Column `i`: `None` if out of range, `Some(None)` for NULL.
    pub fn column(&self, i: usize) -> Option<Option<&'a [u8]>> {
        self.columns().nth(i)
    }

    /// A value returned by [`DataRow::columns`] as a zero-copy [`Bytes`];
    /// `None` if `value` is not a slice of this row.
    pub fn shared(&self, value: &[u8]) -> Option<Bytes> {
        if value.is_empty() {
            return Some(Bytes::new());
        }
        let body = self.body.as_ptr_range();
        let v = value.as_ptr_range();
        (body.start <= v.start && v.end <= body.end).then(|| self.body.slice_ref(value))
    }

    /// Masking fast path. Calls `edit` for each column whose index is in
    /// `targets` (once per column, in column order; indexes past the end are
    /// ignored). If no listed column changes (every answer is
    /// [`ColumnEdit::Keep`] or the value it already had) returns `Ok(None)`,
    /// and the caller forwards the original frame untouched; otherwise
    /// returns the complete rebuilt DataRow message.
    pub fn rewrite<'v, F>(
        &self,
        targets: &[usize],
        mut edit: F,
    ) -> Result<Option<Bytes>, CodecError>
    where
        F: FnMut(usize, Option<&'a [u8]>) -> ColumnEdit<'v>,
    {
        let mut edits: Vec<(usize, Option<Cow<'v, [u8]>>)> = Vec::new();
        for (i, value) in self.columns().enumerate() {
            if targets.contains(&i)
                && let ColumnEdit::Replace(new) = edit(i, value)
                && new.as_deref() != value
            {
                edits.push((i, new));
            }
        }
        if edits.is_empty() {
            return Ok(None);
        }
        let mut pending = edits.iter().peekable();
        let columns =
            self.columns()
                .enumerate()
                .map(|(i, value)| match pending.next_if(|(j, _)| *j == i) {
                    Some((_, new)) => new.as_deref(),
                    None => value,
                });
        let mut dst = BytesMut::with_capacity(self.body.len() + 5);
        Self::encode_columns(columns, &mut dst)?;
        Ok(Some(dst.freeze()))
    }

    /// Writes a DataRow with these column values (`None` for NULL),
    /// computing every length.
    pub fn encode_columns<I, T>(columns: I, dst: &mut BytesMut) -> Result<(), CodecError>
    where
        I: IntoIterator<Item = Option<T>>,
        T: AsRef<[u8]>,
    {
        write_message(dst, Some(Self::TAG), |dst| {
            let count_at = dst.len();
            dst.put_u16(0);
            let mut n: u16 = 0;
            for value in columns {
                n = n.checked_add(1).ok_or(CodecError::Malformed {
                    what: "more than 65535 items for a 16-bit count",
                })?;
                put_nullable_value(dst, value.as_ref().map(AsRef::as_ref))?;
            }
            dst[count_at..count_at + 2].copy_from_slice(&n.to_be_bytes());
            Ok(())
        })
    }

    /// [`DataRow::encode_columns`] into a fresh buffer, e.g. from a
    /// `Vec<Option<Cow<[u8]>>>`.
    pub fn build<I, T>(columns: I) -> Result<Bytes, CodecError>
    where
        I: IntoIterator<Item = Option<T>>,
        T: AsRef<[u8]>,
    {
        let mut dst = BytesMut::new();
        Self::encode_columns(columns, &mut dst)?;
        Ok(dst.freeze())
    }
}

impl Encode for DataRow<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_slice(self.body);
            Ok(())
        })
    }
}

/// Iterator over a [`DataRow`]'s values.
#[derive(Clone, Debug)]
pub struct Columns<'a> {
    rest: &'a [u8],
    remaining: usize,
}

impl<'a> Iterator for Columns<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        // The row was validated by `parse`; the checked reads only keep a
        // logic error from ever turning into a panic.
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let value = match i32::from_be_bytes(*len) {
            -1 => {
                self.rest = rest;
                None
            }
            len => {
                let (value, rest) = rest.split_at_checked(usize::try_from(len).ok()?)?;
                self.rest = rest;
                Some(value)
            }
        };
        self.remaining -= 1;
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Columns<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    /// `1, 'ann@example.com', NULL`.
    const ROW: &[u8] = b"D\0\0\0\x22\0\x03\0\0\0\x011\0\0\0\x0fann@example.com\xff\xff\xff\xff";

    #[test]
    fn columns_are_views() {
        let f = frame(ROW);
        let row = DataRow::parse(f.body()).unwrap();
        assert_eq!(row.len(), 3);
        let cols: Vec<_> = row.columns().collect();
        assert_eq!(
            cols,
            vec![Some(&b"1"[..]), Some(&b"ann@example.com"[..]), None]
        );
        assert_eq!(cols[1].unwrap().as_ptr(), f.raw()[16..].as_ptr());
        assert_eq!(row.columns().len(), 3);
        assert_eq!(row.column(2), Some(None));
        assert_eq!(row.column(3), None);
        let shared = row.shared(cols[1].unwrap()).unwrap();
        assert_eq!(shared.as_ptr(), cols[1].unwrap().as_ptr());
        assert_eq!(row.shared(b"elsewhere"), None);
        assert_eq!(frame_of(&row).raw(), f.raw());
    }

    #[test]
    fn build_matches_capture() {
        let cols: Vec<Option<Cow<'_, [u8]>>> = vec![
            Some(Cow::Borrowed(b"1")),
            Some(Cow::Owned(b"ann@example.com".to_vec())),
            None,
        ];
        assert_eq!(&DataRow::build(cols).unwrap()[..], ROW);
        assert_eq!(
            &DataRow::build(Vec::<Option<&[u8]>>::new()).unwrap()[..],
            b"D\0\0\0\x06\0\0"
        );
    }

    #[test]
    fn rewrite_fast_path_keeps_original() {
        let f = frame(ROW);
        let row = DataRow::parse(f.body()).unwrap();
        let mut seen = Vec::new();
        let out = row
            .rewrite(&[2, 0, 2, 99], |i, v| {
                seen.push((i, v));
                ColumnEdit::Keep
            })
            .unwrap();
        assert_eq!(out, None);
        // Each listed column once, in column order; 99 is past the end.
        assert_eq!(seen, vec![(0, Some(&b"1"[..])), (2, None)]);
        // No targets: nothing called.
        assert_eq!(row.rewrite(&[], |_, _| unreachable!()).unwrap(), None);
        // Replacing with the same value is no change either.
        let same = row
            .rewrite(&[0, 2], |_, v| ColumnEdit::Replace(v.map(Cow::Borrowed)))
            .unwrap();
        assert_eq!(same, None);
    }

    #[test]
    fn rewrite_rebuilds_with_correct_lengths() {
        let f = frame(ROW);
        let row = DataRow::parse(f.body()).unwrap();
        let out = row
            .rewrite(&[1, 2], |i, _| match i {
                1 => ColumnEdit::Replace(Some(Cow::Borrowed(b"a***@example.com"))),
                _ => ColumnEdit::Replace(Some(Cow::Owned(b"x".to_vec()))),
            })
            .unwrap()
            .unwrap();
        let f2 = frame(&out);
        let row2 = DataRow::parse(f2.body()).unwrap();
        let cols: Vec<_> = row2.columns().collect();
        assert_eq!(
            cols,
            vec![
                Some(&b"1"[..]),
                Some(&b"a***@example.com"[..]),
                Some(&b"x"[..])
            ]
        );
        // Replacing with NULL.
        let out = row
            .rewrite(&[0], |_, _| ColumnEdit::Replace(None))
            .unwrap()
            .unwrap();
        let f3 = frame(&out);
        assert_eq!(DataRow::parse(f3.body()).unwrap().column(0), Some(None));
    }

    #[test]
    fn many_columns() {
        let cols = vec![Some(&b""[..]); 65_535];
        let bytes = DataRow::build(cols).unwrap();
        let f = frame(&bytes);
        assert_eq!(DataRow::parse(f.body()).unwrap().columns().count(), 65_535);
        let mut dst = BytesMut::from(&b"keep"[..]);
        let too_many = vec![None::<&[u8]>; 65_536];
        assert!(DataRow::encode_columns(too_many, &mut dst).is_err());
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn malformed() {
        let cases: &[&[u8]] = &[
            b"",
            b"\0",
            // Count 1, no column.
            b"\0\x01",
            // Length past the end.
            b"\0\x01\0\0\0\x05abcd",
            // Negative length other than -1.
            b"\0\x01\xff\xff\xff\xfe",
            b"\0\x01\x80\0\0\0",
            // Trailing bytes.
            b"\0\x01\0\0\0\x01ab",
            b"\0\0\0",
            // Count claims more columns than could fit.
            b"\0\x03\xff\xff\xff\xff\xff\xff\xff\xff",
            // Truncated length field.
            b"\0\x01\0\0",
        ];
        for (i, body) in cases.iter().enumerate() {
            assert!(
                DataRow::parse(&Bytes::copy_from_slice(body)).is_err(),
                "case {i}"
            );
        }
    }
}
