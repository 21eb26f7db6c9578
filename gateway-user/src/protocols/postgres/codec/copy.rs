//! COPY data stream (F & B): CopyData 'd', CopyDone 'c', and CopyFail 'f' (F).
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, empty_message, put_cstr, write_message},
};

/// CopyData: one chunk of COPY data, shared with the frame (no copy). Chunk
/// boundaries need not match rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyData(pub Bytes);

impl CopyData {
    /// The message's tag byte.
    pub const TAG: u8 = b'd';

    /// Takes the whole body as the data.
    pub fn parse(body: &Bytes) -> Result<Self, CodecError> {
        Ok(Self(body.clone()))
    }
}

impl Encode for CopyData {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_slice(&self.0);
            Ok(())
        })
    }
}

empty_message!(
    /// CopyDone: the sender has no more COPY data.
    CopyDone,
    b'c'
);

/// CopyFail: the client aborts COPY FROM STDIN with a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyFail<'a> {
    /// Why the copy failed, reported back in the server's error.
    pub message: &'a str,
}

impl<'a> CopyFail<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'f';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let message = r.cstr()?;
        r.finish()?;
        Ok(Self { message })
    }
}

impl Encode for CopyFail<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_cstr(dst, self.message.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn copy_data_is_zero_copy() {
        let f = frame(b"d\0\0\0\x0a1\tabc\n");
        let d = CopyData::parse(f.body()).unwrap();
        assert_eq!(&d.0[..], b"1\tabc\n");
        assert_eq!(d.0.as_ptr(), f.raw()[5..].as_ptr());
        assert_eq!(frame_of(&d).raw(), f.raw());
        // Empty chunks are legal.
        assert_eq!(CopyData::parse(&Bytes::new()).unwrap().0.len(), 0);
    }

    #[test]
    fn done_and_fail() {
        assert_eq!(&CopyDone.to_bytes().unwrap()[..], b"c\0\0\0\x04");
        assert!(CopyDone::parse(&Bytes::from_static(b"x")).is_err());
        let f = frame(b"f\0\0\0\x09oops\0");
        assert_eq!(CopyFail::parse(f.body()).unwrap().message, "oops");
        assert_eq!(frame_of(&CopyFail { message: "oops" }).raw(), f.raw());
        for body in [&b"oops"[..], b"oops\0x", b"\xc3\0"] {
            assert!(CopyFail::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
