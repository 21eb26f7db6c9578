//! Authentication responses (F 'p'): PasswordMessage, SASLInitialResponse, SASLResponse.
//!
//! All three share the tag `p`; which one a message is depends on the
//! authentication request it answers, so [`FrontendMessage`](super::FrontendMessage)
//! does not decode them: the session, knowing what it asked, calls the
//! matching `parse`.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, put_nullable_value, write_message},
};

/// Tag shared by every authentication response.
pub const PASSWORD_TAG: u8 = b'p';

/// PasswordMessage: a cleartext password or an `md5…` hash. Bytes, not
/// text: a password is sent in the client's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordMessage<'a> {
    /// The password or hash, without the NUL.
    pub password: &'a [u8],
}

impl<'a> PasswordMessage<'a> {
    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let password = r.cbytes()?;
        r.finish()?;
        Ok(Self { password })
    }
}

impl Encode for PasswordMessage<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(PASSWORD_TAG), |dst| put_cstr(dst, self.password))
    }
}

/// SASLInitialResponse: the chosen mechanism and the client-first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// Mechanism name, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// Initial response; `None` (length -1) when the mechanism has none.
    pub data: Option<Bytes>,
}

impl<'a> SaslInitialResponse<'a> {
    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let mechanism = r.cstr()?;
        let data = r.nullable_shared()?;
        r.finish()?;
        Ok(Self { mechanism, data })
    }
}

impl Encode for SaslInitialResponse<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(PASSWORD_TAG), |dst| {
            put_cstr(dst, self.mechanism.as_bytes())?;
            put_nullable_value(dst, self.data.as_deref())
        })
    }
}

/// SASLResponse: a later SASL message (e.g. SCRAM client-final).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslResponse {
    /// The mechanism's data: the whole body.
    pub data: Bytes,
}

impl SaslResponse {
    /// Takes the whole body as the data.
    pub fn parse(body: &Bytes) -> Result<Self, CodecError> {
        Ok(Self { data: body.clone() })
    }
}

impl Encode for SaslResponse {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(PASSWORD_TAG), |dst| {
            dst.put_slice(&self.data);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn password_message() {
        let f = frame(b"p\0\0\0\x28md5a3556571e93b0d20722ba62be61e8c2d\0");
        let p = PasswordMessage::parse(f.body()).unwrap();
        assert_eq!(p.password, b"md5a3556571e93b0d20722ba62be61e8c2d");
        assert_eq!(frame_of(&p).raw(), f.raw());
        // Not UTF-8 is fine for a password.
        let p = PasswordMessage {
            password: b"\xe9t\xe9",
        };
        assert_eq!(PasswordMessage::parse(frame_of(&p).body()).unwrap(), p);
        assert!(PasswordMessage { password: b"a\0" }.to_bytes().is_err());
        for body in [&b"abc"[..], b"abc\0\0"] {
            assert!(PasswordMessage::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }

    #[test]
    fn sasl() {
        let first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO";
        let mut bytes = b"p\0\0\0\x32SCRAM-SHA-256\0\0\0\0\x1c".to_vec();
        bytes.extend_from_slice(first);
        let f = frame(&bytes);
        let s = SaslInitialResponse::parse(f.body()).unwrap();
        assert_eq!(s.mechanism, "SCRAM-SHA-256");
        assert_eq!(s.data.as_deref(), Some(&first[..]));
        assert_eq!(frame_of(&s).raw(), f.raw());
        let none = SaslInitialResponse {
            mechanism: "X",
            data: None,
        };
        assert_eq!(
            SaslInitialResponse::parse(frame_of(&none).body()).unwrap(),
            none
        );
        for body in [
            &b"SCRAM\0"[..],
            b"SCRAM\0\0\0\0\x05abc",
            b"SCRAM\0\0\0\0\x01ab",
            b"SCRAM\0\xff\xff\xff\xf0",
            b"SCRAM",
        ] {
            assert!(SaslInitialResponse::parse(&Bytes::copy_from_slice(body)).is_err());
        }
        let r = SaslResponse {
            data: Bytes::from_static(b"c=biws,r=x,p=y"),
        };
        assert_eq!(SaslResponse::parse(frame_of(&r).body()).unwrap(), r);
    }
}
