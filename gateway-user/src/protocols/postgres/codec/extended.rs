//! Extended query protocol (F): Parse, Bind, Describe, Execute, Close, Sync, Flush.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, empty_message, put_count, put_cstr, put_nullable_value, write_message},
};

/// Parse: prepares `sql` as the named statement (`""` is the unnamed one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// The SQL: a single statement, with `$n` placeholders.
    pub sql: &'a str,
    /// Parameter type OIDs the client pins (0 = let the server infer); may be
    /// fewer than the placeholders.
    pub param_types: Vec<u32>,
}

impl<'a> Parse<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'P';

    /// Parses the body.
    #[expect(
        clippy::self_named_constructors,
        reason = "every message type parses with `parse`; the protocol names this one Parse"
    )]
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let name = r.cstr()?;
        let sql = r.cstr()?;
        let n = r.count(4)?;
        let param_types = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(Self {
            name,
            sql,
            param_types,
        })
    }
}

impl Encode for Parse<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_cstr(dst, self.name.as_bytes())?;
            put_cstr(dst, self.sql.as_bytes())?;
            put_count(dst, self.param_types.len())?;
            for &oid in &self.param_types {
                dst.put_u32(oid);
            }
            Ok(())
        })
    }
}

/// Bind: creates a portal from a prepared statement and parameter values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name; empty for the unnamed portal.
    pub portal: &'a str,
    /// Source statement name; empty for the unnamed statement.
    pub statement: &'a str,
    /// Parameter formats: none (all text), one (applies to all), or one per
    /// parameter. Each is 0 (text) or 1 (binary).
    pub param_formats: Vec<i16>,
    /// Parameter values, `None` for SQL NULL; zero-copy slices of the frame.
    pub params: Vec<Option<Bytes>>,
    /// Result column formats, with the same none/one/each convention.
    pub result_formats: Vec<i16>,
}

impl<'a> Bind<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'B';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let n = r.count(2)?;
        let param_formats: Vec<i16> = (0..n).map(|_| r.format()).collect::<Result<_, _>>()?;
        let n = r.count(4)?;
        let params: Vec<Option<Bytes>> = (0..n)
            .map(|_| r.nullable_shared())
            .collect::<Result<_, _>>()?;
        let n = r.count(2)?;
        let result_formats = (0..n).map(|_| r.format()).collect::<Result<_, _>>()?;
        r.finish()?;
        // Same rule as the server; without it `param_format` would be
        // ambiguous.
        if param_formats.len() > 1 && param_formats.len() != params.len() {
            return Err(CodecError::Malformed {
                what: "Bind parameter format count matches neither 0, 1 nor the parameters",
            });
        }
        Ok(Self {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// The format of parameter `i`: 0 (text) or 1 (binary).
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.as_slice() {
            [] => 0,
            [all] => *all,
            each => each.get(i).copied().unwrap_or(0),
        }
    }
}

impl Encode for Bind<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_cstr(dst, self.portal.as_bytes())?;
            put_cstr(dst, self.statement.as_bytes())?;
            put_count(dst, self.param_formats.len())?;
            for &f in &self.param_formats {
                dst.put_i16(f);
            }
            put_count(dst, self.params.len())?;
            for p in &self.params {
                put_nullable_value(dst, p.as_deref())?;
            }
            put_count(dst, self.result_formats.len())?;
            for &f in &self.result_formats {
                dst.put_i16(f);
            }
            Ok(())
        })
    }
}

/// What Describe and Close act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A prepared statement (`S`).
    Statement,
    /// A portal (`P`).
    Portal,
}

impl ObjectKind {
    /// The wire byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Statement => b'S',
            Self::Portal => b'P',
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        match r.u8()? {
            b'S' => Ok(Self::Statement),
            b'P' => Ok(Self::Portal),
            _ => Err(CodecError::Malformed {
                what: "object kind is neither 'S' nor 'P'",
            }),
        }
    }
}

/// Describe: asks for a statement's parameters and columns, or a portal's
/// columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Describe<'a> {
    /// Statement or portal.
    pub kind: ObjectKind,
    /// Its name; empty for the unnamed one.
    pub name: &'a str,
}

/// Close: releases a statement or portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close<'a> {
    /// Statement or portal.
    pub kind: ObjectKind,
    /// Its name; empty for the unnamed one.
    pub name: &'a str,
}

/// Describe and Close share one layout: kind byte, name.
macro_rules! kind_and_name {
    ($name:ident, $tag:expr) => {
        impl<'a> $name<'a> {
            /// The message's tag byte.
            pub const TAG: u8 = $tag;

            /// Parses the body.
            pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
                let mut r = Reader::new(body);
                let kind = ObjectKind::read(&mut r)?;
                let name = r.cstr()?;
                r.finish()?;
                Ok(Self { kind, name })
            }
        }

        impl Encode for $name<'_> {
            fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
                write_message(dst, Some(Self::TAG), |dst| {
                    dst.put_u8(self.kind.as_byte());
                    put_cstr(dst, self.name.as_bytes())
                })
            }
        }
    };
}
kind_and_name!(Describe, b'D');
kind_and_name!(Close, b'C');

/// Execute: runs a portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Execute<'a> {
    /// Portal name; empty for the unnamed portal.
    pub portal: &'a str,
    /// Row limit; 0 means no limit. Unsigned because the server reads it so
    /// (`0xFFFFFFFF` is four billion rows, not -1).
    pub max_rows: u32,
}

impl<'a> Execute<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'E';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let portal = r.cstr()?;
        let max_rows = r.u32()?;
        r.finish()?;
        Ok(Self { portal, max_rows })
    }
}

impl Encode for Execute<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_cstr(dst, self.portal.as_bytes())?;
            dst.put_u32(self.max_rows);
            Ok(())
        })
    }
}

empty_message!(
    /// Sync: ends an extended-query batch; the server answers ReadyForQuery
    /// (after an error, everything up to Sync is skipped).
    Sync,
    b'S'
);

empty_message!(
    /// Flush: asks the server to send what it has buffered.
    Flush,
    b'H'
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn parse_capture() {
        // tokio-postgres preparing "SELECT $1::int" as s0 with one int4 OID.
        let f = frame(b"P\0\0\0\x1cs0\0SELECT $1::int\0\0\x01\0\0\0\x17");
        let p = Parse::parse(f.body()).unwrap();
        assert_eq!(
            (p.name, p.sql, &p.param_types[..]),
            ("s0", "SELECT $1::int", &[23][..])
        );
        assert_eq!(frame_of(&p).raw(), f.raw());
    }

    #[test]
    fn bind_capture() {
        // Unnamed portal from s0: one binary format, params 42 (int4) and
        // NULL, one text result format.
        let f = frame(
            b"B\0\0\0\x1e\0s0\0\0\x01\0\x01\0\x02\0\0\0\x04\0\0\0\x2a\xff\xff\xff\xff\0\x01\0\0",
        );
        let b = Bind::parse(f.body()).unwrap();
        assert_eq!((b.portal, b.statement), ("", "s0"));
        assert_eq!(b.param_formats, vec![1]);
        assert_eq!(
            b.params,
            vec![Some(Bytes::from_static(b"\0\0\0\x2a")), None]
        );
        assert_eq!(b.result_formats, vec![0]);
        assert_eq!((b.param_format(0), b.param_format(1)), (1, 1));
        // Values are views into the frame.
        assert_eq!(
            b.params[0].as_ref().unwrap().as_ptr(),
            f.raw()[19..].as_ptr()
        );
        assert_eq!(frame_of(&b).raw(), f.raw());
    }

    #[test]
    fn round_trips() {
        let b = Bind {
            portal: "p",
            statement: "",
            param_formats: vec![0, 1, 0],
            params: vec![Some(Bytes::from_static(b"x")), Some(Bytes::new()), None],
            result_formats: vec![],
        };
        let f = frame_of(&b);
        assert_eq!(Bind::parse(f.body()).unwrap(), b);
        assert_eq!((b.param_format(1), b.param_format(9)), (1, 0));
        // 65535 parameters, the protocol's real maximum.
        let many = Parse {
            name: "",
            sql: "x",
            param_types: vec![0; 65_535],
        };
        let f = frame_of(&many);
        assert_eq!(Parse::parse(f.body()).unwrap().param_types.len(), 65_535);
        let d = Describe {
            kind: ObjectKind::Portal,
            name: "p",
        };
        assert_eq!(Describe::parse(frame_of(&d).body()).unwrap(), d);
        let c = Close {
            kind: ObjectKind::Statement,
            name: "",
        };
        assert_eq!(&c.to_bytes().unwrap()[..], b"C\0\0\0\x06S\0");
        assert_eq!(Close::parse(frame_of(&c).body()).unwrap(), c);
        let e = Execute {
            portal: "",
            max_rows: u32::MAX,
        };
        assert_eq!(Execute::parse(frame_of(&e).body()).unwrap(), e);
        assert_eq!(&Sync.to_bytes().unwrap()[..], b"S\0\0\0\x04");
        assert_eq!(&Flush.to_bytes().unwrap()[..], b"H\0\0\0\x04");
    }

    #[test]
    fn malformed() {
        let bad_parse: &[&[u8]] = &[
            b"s0\0SELECT 1\0",                 // no count
            b"s0\0SELECT 1\0\0\x02\0\0\0\x17", // count 2, one OID
            b"s0\0SELECT 1\0\0\0x",            // trailing
            b"s0\0SELECT 1",                   // missing NUL
            b"s0\0\xffSELECT\0\0\0",           // not UTF-8
        ];
        for (i, body) in bad_parse.iter().enumerate() {
            assert!(
                Parse::parse(&Bytes::copy_from_slice(body)).is_err(),
                "Parse {i}"
            );
        }
        let bad_bind: &[&[u8]] = &[
            // Negative length other than -1.
            b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0",
            // Length past the end.
            b"\0\0\0\0\0\x01\0\0\0\x09abc\0\0",
            // Format code 2.
            b"\0\0\0\x01\0\x02\0\0\0\0",
            // Two formats for one parameter.
            b"\0\0\0\x02\0\0\0\0\0\x01\0\0\0\0\0\0",
            // Result format count exceeds the body.
            b"\0\0\0\0\0\0\0\x05\0\0",
            // Trailing byte.
            b"\0\0\0\0\0\0\0\0\0",
            // Missing result format count.
            b"\0\0\0\0\0\0",
            // Count claims 65535 params in a tiny body.
            b"\0\0\0\0\xff\xff\0\0\0\0",
        ];
        for (i, body) in bad_bind.iter().enumerate() {
            assert!(
                Bind::parse(&Bytes::copy_from_slice(body)).is_err(),
                "Bind {i}"
            );
        }
        for body in [&b"X\0"[..], b"S", b"Sx", b"S\0\0", b""] {
            assert!(Describe::parse(&Bytes::copy_from_slice(body)).is_err());
            assert!(Close::parse(&Bytes::copy_from_slice(body)).is_err());
        }
        for body in [&b"\0\0\0\0"[..], b"\0\0\0\0\0\0", b"p\0\0\0\0"] {
            assert!(Execute::parse(&Bytes::copy_from_slice(body)).is_err());
        }
        assert!(Sync::parse(&Bytes::from_static(b"\0")).is_err());
        assert!(Flush::parse(&Bytes::from_static(b"\0")).is_err());
    }

    #[test]
    fn builders_refuse_unrepresentable() {
        let p = Parse {
            name: "",
            sql: "x",
            param_types: vec![0; 65_536],
        };
        assert!(p.to_bytes().is_err());
        let d = Describe {
            kind: ObjectKind::Statement,
            name: "a\0",
        };
        assert!(d.to_bytes().is_err());
    }
}
