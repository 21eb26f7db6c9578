//! ParameterDescription (B 't'): the parameter types of a described statement.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_count, write_message},
};

/// ParameterDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterDescription {
    /// Type OID of each `$n` parameter, in order.
    pub types: Vec<u32>,
}

impl ParameterDescription {
    /// The message's tag byte.
    pub const TAG: u8 = b't';

    /// Parses the body.
    pub fn parse(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let n = r.count(4)?;
        let types = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(Self { types })
    }
}

impl Encode for ParameterDescription {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_count(dst, self.types.len())?;
            for &oid in &self.types {
                dst.put_u32(oid);
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
    fn capture_and_round_trip() {
        let f = frame(b"t\0\0\0\x0e\0\x02\0\0\0\x17\0\0\0\x19");
        let p = ParameterDescription::parse(f.body()).unwrap();
        assert_eq!(p.types, vec![23, 25]);
        assert_eq!(frame_of(&p).raw(), f.raw());
    }

    #[test]
    fn malformed() {
        for body in [
            &b""[..],
            b"\0\x01\0\0\0",
            b"\0\x01\0\0\0\x17\0",
            b"\xff\xff",
        ] {
            assert!(ParameterDescription::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
