//! RowDescription (B 'T'): the columns of the rows that follow.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_count, put_cstr, write_message},
};

/// One column of a RowDescription. `table_oid` and `column_attr` identify
/// the source column (both 0 for computed columns); masking rules key on
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    /// Column name (or alias) as the client will see it.
    pub name: &'a str,
    /// OID of the source table, or 0.
    pub table_oid: u32,
    /// Attribute number of the source column, or 0.
    pub column_attr: i16,
    /// OID of the column's data type.
    pub type_oid: u32,
    /// `pg_type.typlen`: negative for variable-width types.
    pub type_size: i16,
    /// `pg_attribute.atttypmod`, type-specific.
    pub type_modifier: i32,
    /// 0 (text) or 1 (binary). Always 0 when describing a statement, whose
    /// formats are not known until Bind.
    pub format: i16,
}

/// RowDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowDescription<'a> {
    /// The columns, in order.
    pub fields: Vec<FieldDescription<'a>>,
}

/// Smallest encoded field: empty name (1) + 4 + 2 + 4 + 2 + 4 + 2.
const MIN_FIELD: usize = 19;

impl<'a> RowDescription<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'T';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let n = r.count(MIN_FIELD)?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(FieldDescription {
                name: r.cstr()?,
                table_oid: r.u32()?,
                column_attr: r.i16()?,
                type_oid: r.u32()?,
                type_size: r.i16()?,
                type_modifier: r.i32()?,
                format: r.format()?,
            });
        }
        r.finish()?;
        Ok(Self { fields })
    }
}

impl Encode for RowDescription<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_count(dst, self.fields.len())?;
            for f in &self.fields {
                put_cstr(dst, f.name.as_bytes())?;
                dst.put_u32(f.table_oid);
                dst.put_i16(f.column_attr);
                dst.put_u32(f.type_oid);
                dst.put_i16(f.type_size);
                dst.put_i32(f.type_modifier);
                dst.put_i16(f.format);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture() {
        // SELECT id, email FROM users (table OID 16384): int4 attr 1,
        // varchar(255) attr 2 (typmod 259).
        let f = frame(
            b"T\0\0\0\x33\0\x02\
              id\0\0\0\x40\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0\
              email\0\0\0\x40\0\0\x02\0\0\x04\x13\xff\xff\0\0\x01\x03\0\0",
        );
        let d = RowDescription::parse(f.body()).unwrap();
        assert_eq!(
            d.fields,
            vec![
                FieldDescription {
                    name: "id",
                    table_oid: 16384,
                    column_attr: 1,
                    type_oid: 23,
                    type_size: 4,
                    type_modifier: -1,
                    format: 0,
                },
                FieldDescription {
                    name: "email",
                    table_oid: 16384,
                    column_attr: 2,
                    type_oid: 1043,
                    type_size: -1,
                    type_modifier: 259,
                    format: 0,
                },
            ]
        );
        assert_eq!(frame_of(&d).raw(), f.raw());
    }

    #[test]
    fn round_trips() {
        let empty = RowDescription { fields: vec![] };
        assert_eq!(
            RowDescription::parse(frame_of(&empty).body()).unwrap(),
            empty
        );
        let field = FieldDescription {
            name: "",
            table_oid: u32::MAX,
            column_attr: -1,
            type_oid: 0,
            type_size: -2,
            type_modifier: i32::MIN,
            format: 1,
        };
        let d = RowDescription {
            fields: vec![field; 1664],
        };
        assert_eq!(RowDescription::parse(frame_of(&d).body()).unwrap(), d);
    }

    #[test]
    fn malformed() {
        let one: Vec<u8> = [&b"\0\x01a\0"[..], &[0; 18]].concat();
        assert!(RowDescription::parse(&Bytes::from(one.clone())).is_ok());
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\0".to_vec(),
            // Count 2 with one field.
            [&b"\0\x02"[..], &one[2..]].concat(),
            // Trailing byte.
            [&one[..], &b"x"[..]].concat(),
            // Field cut short.
            one[..one.len() - 1].to_vec(),
            // Name without NUL.
            b"\0\x01abc".to_vec(),
            // Name not UTF-8.
            [&b"\0\x01\xff"[..], &one[3..]].concat(),
        ];
        // Format code 2.
        let mut bad_format = one.clone();
        *bad_format.last_mut().unwrap() = 2;
        cases.push(bad_format);
        for (i, body) in cases.into_iter().enumerate() {
            assert!(
                RowDescription::parse(&Bytes::from(body)).is_err(),
                "case {i}"
            );
        }
    }
}
