//! NegotiateProtocolVersion (B 'v'): the server's newest minor version and the options it ignored.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, write_message},
};

/// NegotiateProtocolVersion: sent when the client asked for a newer minor
/// version or for `_pq_.` options the server does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiateProtocolVersion<'a> {
    /// Newest minor version the server supports for the requested major.
    pub newest_minor: u32,
    /// Protocol options (`_pq_.…`) the server did not recognise.
    pub unrecognized: Vec<&'a str>,
}

impl<'a> NegotiateProtocolVersion<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'v';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let newest_minor = r.u32()?;
        let n = usize::try_from(r.i32()?).map_err(|_| CodecError::Malformed {
            what: "negative option count",
        })?;
        // Each option takes at least its NUL; checked before allocating.
        if n > r.remaining() {
            return Err(CodecError::Truncated);
        }
        let unrecognized = (0..n).map(|_| r.cstr()).collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(Self {
            newest_minor,
            unrecognized,
        })
    }
}

impl Encode for NegotiateProtocolVersion<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_u32(self.newest_minor);
            let n = i32::try_from(self.unrecognized.len()).map_err(|_| CodecError::Malformed {
                what: "too many options",
            })?;
            dst.put_i32(n);
            for o in &self.unrecognized {
                put_cstr(dst, o.as_bytes())?;
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
        let f = frame(b"v\0\0\0\x15\0\0\0\0\0\0\0\x01_pq_.foo\0");
        let v = NegotiateProtocolVersion::parse(f.body()).unwrap();
        assert_eq!(
            (v.newest_minor, &v.unrecognized[..]),
            (0, &["_pq_.foo"][..])
        );
        assert_eq!(frame_of(&v).raw(), f.raw());
    }

    #[test]
    fn malformed() {
        for body in [
            &b"\0\0\0\0"[..],
            b"\0\0\0\0\xff\xff\xff\xff",
            b"\0\0\0\0\0\0\0\x02a\0",
            b"\0\0\0\0\0\0\0\x01a",
            b"\0\0\0\0\0\0\0\0x",
            b"\0\0\0\0\x7f\xff\xff\xff",
        ] {
            assert!(NegotiateProtocolVersion::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
