//! FrontendMessage: every tagged client → server message, dispatched on its tag.
use bytes::BytesMut;

use super::{
    Bind, Close, CodecError, CopyData, CopyDone, CopyFail, Describe, Encode, Execute, Flush, Frame,
    FunctionCall, Parse, Query, Sync, Terminate,
};

/// A parsed client message after startup, borrowing text from its frame.
///
/// Authentication responses (`p`) are not included: their layout depends
/// on the request they answer (see [`PasswordMessage`](super::PasswordMessage)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// `Q`
    Query(Query<'a>),
    /// `P`
    Parse(Parse<'a>),
    /// `B`
    Bind(Bind<'a>),
    /// `D`
    Describe(Describe<'a>),
    /// `E`
    Execute(Execute<'a>),
    /// `C`
    Close(Close<'a>),
    /// `S`
    Sync,
    /// `H`
    Flush,
    /// `d`
    CopyData(CopyData),
    /// `c`
    CopyDone,
    /// `f`
    CopyFail(CopyFail<'a>),
    /// `F`
    FunctionCall(FunctionCall),
    /// `X`
    Terminate,
}

impl<'a> FrontendMessage<'a> {
    /// Parses a frame read from the client. Tags the client may not send
    /// here (including `p`) are [`CodecError::UnknownTag`].
    pub fn parse(frame: &'a Frame) -> Result<Self, CodecError> {
        let body = frame.body();
        Ok(match frame.tag() {
            Query::TAG => Self::Query(Query::parse(body)?),
            Parse::TAG => Self::Parse(Parse::parse(body)?),
            Bind::TAG => Self::Bind(Bind::parse(body)?),
            Describe::TAG => Self::Describe(Describe::parse(body)?),
            Execute::TAG => Self::Execute(Execute::parse(body)?),
            Close::TAG => Self::Close(Close::parse(body)?),
            Sync::TAG => Sync::parse(body).map(|_| Self::Sync)?,
            Flush::TAG => Flush::parse(body).map(|_| Self::Flush)?,
            CopyData::TAG => Self::CopyData(CopyData::parse(body)?),
            CopyDone::TAG => CopyDone::parse(body).map(|_| Self::CopyDone)?,
            CopyFail::TAG => Self::CopyFail(CopyFail::parse(body)?),
            FunctionCall::TAG => Self::FunctionCall(FunctionCall::parse(body)?),
            Terminate::TAG => Terminate::parse(body).map(|_| Self::Terminate)?,
            tag => return Err(CodecError::UnknownTag(tag)),
        })
    }

    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Query(_) => Query::TAG,
            Self::Parse(_) => Parse::TAG,
            Self::Bind(_) => Bind::TAG,
            Self::Describe(_) => Describe::TAG,
            Self::Execute(_) => Execute::TAG,
            Self::Close(_) => Close::TAG,
            Self::Sync => Sync::TAG,
            Self::Flush => Flush::TAG,
            Self::CopyData(_) => CopyData::TAG,
            Self::CopyDone => CopyDone::TAG,
            Self::CopyFail(_) => CopyFail::TAG,
            Self::FunctionCall(_) => FunctionCall::TAG,
            Self::Terminate => Terminate::TAG,
        }
    }
}

impl Encode for FrontendMessage<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Self::Query(m) => m.encode_into(dst),
            Self::Parse(m) => m.encode_into(dst),
            Self::Bind(m) => m.encode_into(dst),
            Self::Describe(m) => m.encode_into(dst),
            Self::Execute(m) => m.encode_into(dst),
            Self::Close(m) => m.encode_into(dst),
            Self::Sync => Sync.encode_into(dst),
            Self::Flush => Flush.encode_into(dst),
            Self::CopyData(m) => m.encode_into(dst),
            Self::CopyDone => CopyDone.encode_into(dst),
            Self::CopyFail(m) => m.encode_into(dst),
            Self::FunctionCall(m) => m.encode_into(dst),
            Self::Terminate => Terminate.encode_into(dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::frame;

    #[test]
    fn dispatches_every_tag() {
        let cases: &[(&[u8], u8)] = &[
            (b"Q\0\0\0\x05\0", b'Q'),
            (b"P\0\0\0\x08\0\0\0\0", b'P'),
            (b"B\0\0\0\x0c\0\0\0\0\0\0\0\0", b'B'),
            (b"D\0\0\0\x06S\0", b'D'),
            (b"E\0\0\0\x09\0\0\0\0\0", b'E'),
            (b"C\0\0\0\x06P\0", b'C'),
            (b"S\0\0\0\x04", b'S'),
            (b"H\0\0\0\x04", b'H'),
            (b"d\0\0\0\x05z", b'd'),
            (b"c\0\0\0\x04", b'c'),
            (b"f\0\0\0\x05\0", b'f'),
            (b"F\0\0\0\x0e\0\0\0\x01\0\0\0\0\0\0", b'F'),
            (b"X\0\0\0\x04", b'X'),
        ];
        for &(bytes, tag) in cases {
            let f = frame(bytes);
            let m = FrontendMessage::parse(&f).unwrap();
            assert_eq!(m.tag(), tag);
            assert_eq!(&m.to_bytes().unwrap(), f.raw());
        }
    }

    #[test]
    fn unknown_tags_and_bad_bodies() {
        for tag in [b'p', b'R', b'Z', b'T', b'\0', 0xff] {
            let f = frame(&[tag, 0, 0, 0, 4]);
            assert!(
                matches!(FrontendMessage::parse(&f), Err(CodecError::UnknownTag(t)) if t == tag)
            );
        }
        // Known tags with bodies they cannot have.
        for bytes in [
            &b"S\0\0\0\x05x"[..],
            b"X\0\0\0\x05x",
            b"c\0\0\0\x05x",
            b"Q\0\0\0\x04",
        ] {
            assert!(FrontendMessage::parse(&frame(bytes)).is_err());
        }
    }
}
