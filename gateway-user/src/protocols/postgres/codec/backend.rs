//! BackendMessage: every server → client message, dispatched on its tag.
use bytes::BytesMut;

use super::{
    Authentication, BackendKeyData, BindComplete, CloseComplete, CodecError, CommandComplete,
    CopyData, CopyDone, CopyResponse, CopyResponseKind, DataRow, EmptyQueryResponse, Encode,
    ErrorResponse, Frame, FunctionCallResponse, NegotiateProtocolVersion, NoData, NoticeResponse,
    NotificationResponse, ParameterDescription, ParameterStatus, ParseComplete, PortalSuspended,
    ReadyForQuery, RowDescription,
};

/// A parsed server message, borrowing from its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// `R`
    Authentication(Authentication<'a>),
    /// `K`
    BackendKeyData(BackendKeyData),
    /// `S`
    ParameterStatus(ParameterStatus<'a>),
    /// `Z`
    ReadyForQuery(ReadyForQuery),
    /// `T`
    RowDescription(RowDescription<'a>),
    /// `D`
    DataRow(DataRow<'a>),
    /// `C`
    CommandComplete(CommandComplete<'a>),
    /// `E`
    ErrorResponse(ErrorResponse<'a>),
    /// `N`
    NoticeResponse(NoticeResponse<'a>),
    /// `G`, `H`, `W`
    CopyResponse(CopyResponse),
    /// `d`
    CopyData(CopyData),
    /// `c`
    CopyDone,
    /// `A`
    NotificationResponse(NotificationResponse<'a>),
    /// `1`
    ParseComplete,
    /// `2`
    BindComplete,
    /// `3`
    CloseComplete,
    /// `n`
    NoData,
    /// `s`
    PortalSuspended,
    /// `I`
    EmptyQueryResponse,
    /// `t`
    ParameterDescription(ParameterDescription),
    /// `v`
    NegotiateProtocolVersion(NegotiateProtocolVersion<'a>),
    /// `V`
    FunctionCallResponse(FunctionCallResponse),
}

impl<'a> BackendMessage<'a> {
    /// Parses a frame read from the server. Tags the server does not send
    /// are [`CodecError::UnknownTag`].
    pub fn parse(frame: &'a Frame) -> Result<Self, CodecError> {
        let body = frame.body();
        Ok(match frame.tag() {
            Authentication::TAG => Self::Authentication(Authentication::parse(body)?),
            BackendKeyData::TAG => Self::BackendKeyData(BackendKeyData::parse(body)?),
            ParameterStatus::TAG => Self::ParameterStatus(ParameterStatus::parse(body)?),
            ReadyForQuery::TAG => Self::ReadyForQuery(ReadyForQuery::parse(body)?),
            RowDescription::TAG => Self::RowDescription(RowDescription::parse(body)?),
            DataRow::TAG => Self::DataRow(DataRow::parse(body)?),
            CommandComplete::TAG => Self::CommandComplete(CommandComplete::parse(body)?),
            ErrorResponse::TAG => Self::ErrorResponse(ErrorResponse::parse(body)?),
            NoticeResponse::TAG => Self::NoticeResponse(NoticeResponse::parse(body)?),
            tag @ (b'G' | b'H' | b'W') => {
                let kind = CopyResponseKind::from_tag(tag).ok_or(CodecError::UnknownTag(tag))?;
                Self::CopyResponse(CopyResponse::parse(kind, body)?)
            }
            CopyData::TAG => Self::CopyData(CopyData::parse(body)?),
            CopyDone::TAG => CopyDone::parse(body).map(|_| Self::CopyDone)?,
            NotificationResponse::TAG => {
                Self::NotificationResponse(NotificationResponse::parse(body)?)
            }
            ParseComplete::TAG => ParseComplete::parse(body).map(|_| Self::ParseComplete)?,
            BindComplete::TAG => BindComplete::parse(body).map(|_| Self::BindComplete)?,
            CloseComplete::TAG => CloseComplete::parse(body).map(|_| Self::CloseComplete)?,
            NoData::TAG => NoData::parse(body).map(|_| Self::NoData)?,
            PortalSuspended::TAG => PortalSuspended::parse(body).map(|_| Self::PortalSuspended)?,
            EmptyQueryResponse::TAG => {
                EmptyQueryResponse::parse(body).map(|_| Self::EmptyQueryResponse)?
            }
            ParameterDescription::TAG => {
                Self::ParameterDescription(ParameterDescription::parse(body)?)
            }
            NegotiateProtocolVersion::TAG => {
                Self::NegotiateProtocolVersion(NegotiateProtocolVersion::parse(body)?)
            }
            FunctionCallResponse::TAG => {
                Self::FunctionCallResponse(FunctionCallResponse::parse(body)?)
            }
            tag => return Err(CodecError::UnknownTag(tag)),
        })
    }

    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Authentication(_) => Authentication::TAG,
            Self::BackendKeyData(_) => BackendKeyData::TAG,
            Self::ParameterStatus(_) => ParameterStatus::TAG,
            Self::ReadyForQuery(_) => ReadyForQuery::TAG,
            Self::RowDescription(_) => RowDescription::TAG,
            Self::DataRow(_) => DataRow::TAG,
            Self::CommandComplete(_) => CommandComplete::TAG,
            Self::ErrorResponse(_) => ErrorResponse::TAG,
            Self::NoticeResponse(_) => NoticeResponse::TAG,
            Self::CopyResponse(c) => c.kind.tag(),
            Self::CopyData(_) => CopyData::TAG,
            Self::CopyDone => CopyDone::TAG,
            Self::NotificationResponse(_) => NotificationResponse::TAG,
            Self::ParseComplete => ParseComplete::TAG,
            Self::BindComplete => BindComplete::TAG,
            Self::CloseComplete => CloseComplete::TAG,
            Self::NoData => NoData::TAG,
            Self::PortalSuspended => PortalSuspended::TAG,
            Self::EmptyQueryResponse => EmptyQueryResponse::TAG,
            Self::ParameterDescription(_) => ParameterDescription::TAG,
            Self::NegotiateProtocolVersion(_) => NegotiateProtocolVersion::TAG,
            Self::FunctionCallResponse(_) => FunctionCallResponse::TAG,
        }
    }
}

impl Encode for BackendMessage<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Self::Authentication(m) => m.encode_into(dst),
            Self::BackendKeyData(m) => m.encode_into(dst),
            Self::ParameterStatus(m) => m.encode_into(dst),
            Self::ReadyForQuery(m) => m.encode_into(dst),
            Self::RowDescription(m) => m.encode_into(dst),
            Self::DataRow(m) => m.encode_into(dst),
            Self::CommandComplete(m) => m.encode_into(dst),
            Self::ErrorResponse(m) => m.encode_into(dst),
            Self::NoticeResponse(m) => m.encode_into(dst),
            Self::CopyResponse(m) => m.encode_into(dst),
            Self::CopyData(m) => m.encode_into(dst),
            Self::CopyDone => CopyDone.encode_into(dst),
            Self::NotificationResponse(m) => m.encode_into(dst),
            Self::ParseComplete => ParseComplete.encode_into(dst),
            Self::BindComplete => BindComplete.encode_into(dst),
            Self::CloseComplete => CloseComplete.encode_into(dst),
            Self::NoData => NoData.encode_into(dst),
            Self::PortalSuspended => PortalSuspended.encode_into(dst),
            Self::EmptyQueryResponse => EmptyQueryResponse.encode_into(dst),
            Self::ParameterDescription(m) => m.encode_into(dst),
            Self::NegotiateProtocolVersion(m) => m.encode_into(dst),
            Self::FunctionCallResponse(m) => m.encode_into(dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::frame;

    #[test]
    fn dispatches_every_tag() {
        let cases: &[&[u8]] = &[
            b"R\0\0\0\x08\0\0\0\0",
            b"K\0\0\0\x0c\0\0\0\x01abcd",
            b"S\0\0\0\x08a\0b\0",
            b"Z\0\0\0\x05I",
            b"T\0\0\0\x06\0\0",
            b"D\0\0\0\x0a\0\x01\xff\xff\xff\xff",
            b"C\0\0\0\x0aBEGIN\0",
            b"E\0\0\0\x05\0",
            b"N\0\0\0\x05\0",
            b"G\0\0\0\x07\0\0\0",
            b"H\0\0\0\x07\x01\0\0",
            b"W\0\0\0\x09\x01\0\x01\0\x01",
            b"d\0\0\0\x04",
            b"c\0\0\0\x04",
            b"A\0\0\0\x0a\0\0\0\x01\0\0",
            b"1\0\0\0\x04",
            b"2\0\0\0\x04",
            b"3\0\0\0\x04",
            b"n\0\0\0\x04",
            b"s\0\0\0\x04",
            b"I\0\0\0\x04",
            b"t\0\0\0\x06\0\0",
            b"v\0\0\0\x0c\0\0\0\x02\0\0\0\0",
            b"V\0\0\0\x08\xff\xff\xff\xff",
        ];
        for bytes in cases {
            let f = frame(bytes);
            let m = BackendMessage::parse(&f).unwrap();
            assert_eq!(m.tag(), bytes[0]);
            assert_eq!(&m.to_bytes().unwrap(), f.raw());
        }
    }

    #[test]
    fn unknown_tags() {
        for tag in [b'Q', b'P', b'p', b'X', b'\0', 0x80] {
            let f = frame(&[tag, 0, 0, 0, 4]);
            assert!(
                matches!(BackendMessage::parse(&f), Err(CodecError::UnknownTag(t)) if t == tag)
            );
        }
    }
}
