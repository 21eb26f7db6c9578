//! ParameterStatus (B 'S'): the server reporting a run-time parameter's value.
use bytes::{Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, write_message},
};

/// ParameterStatus, e.g. `server_version`, `client_encoding`, `TimeZone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    /// Parameter name.
    pub name: &'a str,
    /// Its current value.
    pub value: &'a str,
}

impl<'a> ParameterStatus<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'S';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let name = r.cstr()?;
        let value = r.cstr()?;
        r.finish()?;
        Ok(Self { name, value })
    }
}

impl Encode for ParameterStatus<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_cstr(dst, self.name.as_bytes())?;
            put_cstr(dst, self.value.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture_and_round_trip() {
        let f = frame(b"S\0\0\0\x19client_encoding\0UTF8\0");
        let p = ParameterStatus::parse(f.body()).unwrap();
        assert_eq!((p.name, p.value), ("client_encoding", "UTF8"));
        assert_eq!(frame_of(&p).raw(), f.raw());
    }

    #[test]
    fn malformed() {
        for body in [&b"a\0"[..], b"a\0b", b"a\0b\0c", b"\xff\0b\0", b""] {
            assert!(ParameterStatus::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
