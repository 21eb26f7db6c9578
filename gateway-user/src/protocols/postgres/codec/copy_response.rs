//! CopyInResponse 'G', CopyOutResponse 'H', CopyBothResponse 'W' (B): a COPY is starting.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_count, write_message},
};

/// Which way the COPY data will flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyResponseKind {
    /// `G`: COPY FROM STDIN, client sends CopyData.
    In,
    /// `H`: COPY TO STDOUT, server sends CopyData.
    Out,
    /// `W`: both ways (streaming replication).
    Both,
}

impl CopyResponseKind {
    /// The message's tag byte.
    pub fn tag(self) -> u8 {
        match self {
            Self::In => b'G',
            Self::Out => b'H',
            Self::Both => b'W',
        }
    }

    /// The kind a tag stands for.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            b'G' => Some(Self::In),
            b'H' => Some(Self::Out),
            b'W' => Some(Self::Both),
            _ => None,
        }
    }
}

/// The start of a COPY, with its formats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyResponse {
    /// Direction.
    pub kind: CopyResponseKind,
    /// Overall format: 0 (text, rows are lines) or 1 (binary).
    pub format: u8,
    /// Per-column formats; all 0 when `format` is 0.
    pub column_formats: Vec<i16>,
}

impl CopyResponse {
    /// Parses the body of a message of this kind.
    pub fn parse(kind: CopyResponseKind, body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let format = r.u8()?;
        if format > 1 {
            return Err(CodecError::Malformed {
                what: "COPY format is neither 0 (text) nor 1 (binary)",
            });
        }
        let n = r.count(2)?;
        let column_formats: Vec<i16> = (0..n).map(|_| r.format()).collect::<Result<_, _>>()?;
        r.finish()?;
        // The protocol requires it; a text COPY with a binary column would
        // leave the gateway unsure how to read the rows.
        if format == 0 && column_formats.iter().any(|&f| f != 0) {
            return Err(CodecError::Malformed {
                what: "binary column in a text COPY",
            });
        }
        Ok(Self {
            kind,
            format,
            column_formats,
        })
    }
}

impl Encode for CopyResponse {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(self.kind.tag()), |dst| {
            dst.put_u8(self.format);
            put_count(dst, self.column_formats.len())?;
            for &f in &self.column_formats {
                dst.put_i16(f);
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
    fn capture_and_round_trips() {
        // COPY t TO STDOUT of a two-column table, text.
        let f = frame(b"H\0\0\0\x0b\0\0\x02\0\0\0\0");
        let kind = CopyResponseKind::from_tag(f.tag()).unwrap();
        let c = CopyResponse::parse(kind, f.body()).unwrap();
        assert_eq!(
            (c.kind, c.format, &c.column_formats[..]),
            (CopyResponseKind::Out, 0, &[0, 0][..])
        );
        assert_eq!(frame_of(&c).raw(), f.raw());
        for kind in [
            CopyResponseKind::In,
            CopyResponseKind::Out,
            CopyResponseKind::Both,
        ] {
            let c = CopyResponse {
                kind,
                format: 1,
                column_formats: vec![1, 0, 1],
            };
            let f = frame_of(&c);
            assert_eq!(CopyResponseKind::from_tag(f.tag()), Some(kind));
            assert_eq!(CopyResponse::parse(kind, f.body()).unwrap(), c);
        }
        assert_eq!(CopyResponseKind::from_tag(b'd'), None);
    }

    #[test]
    fn malformed() {
        for body in [
            &b""[..],
            b"\0",
            b"\x02\0\0",         // format 2
            b"\0\0\x01\0\x01",   // binary column in text copy
            b"\x01\0\x01\0\x02", // column format 2
            b"\0\0\x02\0\0",     // count exceeds body
            b"\0\0\0\0",         // trailing
        ] {
            assert!(
                CopyResponse::parse(CopyResponseKind::In, &Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
    }
}
