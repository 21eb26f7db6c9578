//! Fast-path function call: FunctionCall (F 'F') and FunctionCallResponse (B 'V').
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_count, put_nullable_value, write_message},
};

/// FunctionCall: calls a function by OID, bypassing SQL. The gateway only
/// needs to recognise it (policy sees no statement, so it is denied unless
/// a rule allows it), but it is parsed fully so a malformed one is refused
/// like any other message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCall {
    /// OID of the function to call.
    pub function_oid: u32,
    /// Argument formats, with Bind's none/one/each convention.
    pub arg_formats: Vec<i16>,
    /// Argument values, `None` for NULL.
    pub args: Vec<Option<Bytes>>,
    /// Result format: 0 (text) or 1 (binary).
    pub result_format: i16,
}

impl FunctionCall {
    /// The message's tag byte.
    pub const TAG: u8 = b'F';

    /// Parses the body.
    pub fn parse(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let function_oid = r.u32()?;
        let n = r.count(2)?;
        let arg_formats = (0..n).map(|_| r.format()).collect::<Result<_, _>>()?;
        let n = r.count(4)?;
        let args = (0..n)
            .map(|_| r.nullable_shared())
            .collect::<Result<_, _>>()?;
        let result_format = r.format()?;
        r.finish()?;
        Ok(Self {
            function_oid,
            arg_formats,
            args,
            result_format,
        })
    }
}

impl Encode for FunctionCall {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_u32(self.function_oid);
            put_count(dst, self.arg_formats.len())?;
            for &f in &self.arg_formats {
                dst.put_i16(f);
            }
            put_count(dst, self.args.len())?;
            for a in &self.args {
                put_nullable_value(dst, a.as_deref())?;
            }
            dst.put_i16(self.result_format);
            Ok(())
        })
    }
}

/// FunctionCallResponse: the result of a FunctionCall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCallResponse {
    /// The result, `None` for NULL.
    pub value: Option<Bytes>,
}

impl FunctionCallResponse {
    /// The message's tag byte.
    pub const TAG: u8 = b'V';

    /// Parses the body.
    pub fn parse(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let value = r.nullable_shared()?;
        r.finish()?;
        Ok(Self { value })
    }
}

impl Encode for FunctionCallResponse {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_nullable_value(dst, self.value.as_deref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture_and_round_trip() {
        // lo_open(oid 952) with two binary int4 args, binary result.
        let f = frame(
            b"F\0\0\0\x20\0\0\x03\xb8\0\x01\0\x01\0\x02\
              \0\0\0\x04\0\0\x40\0\0\0\0\x04\0\x02\0\0\0\x01",
        );
        let c = FunctionCall::parse(f.body()).unwrap();
        assert_eq!(c.function_oid, 952);
        assert_eq!(c.args.len(), 2);
        assert_eq!(c.result_format, 1);
        assert_eq!(frame_of(&c).raw(), f.raw());
        for value in [None, Some(Bytes::from_static(b"\0\0\0\x01"))] {
            let r = FunctionCallResponse { value };
            assert_eq!(FunctionCallResponse::parse(frame_of(&r).body()).unwrap(), r);
        }
    }

    #[test]
    fn malformed() {
        for body in [
            &b"\0\0\x03"[..],
            b"\0\0\x03\xb8\0\0\0\0",
            b"\0\0\x03\xb8\0\0\0\0\0\x02",
            b"\0\0\x03\xb8\0\0\0\x01\xff\xff\xff\xfd\0\0",
            b"\0\0\x03\xb8\0\0\0\0\0\0\0",
        ] {
            assert!(
                FunctionCall::parse(&Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
        for body in [
            &b""[..],
            b"\xff\xff\xff\xfe",
            b"\0\0\0\x02a",
            b"\xff\xff\xff\xff\0",
        ] {
            assert!(FunctionCallResponse::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
