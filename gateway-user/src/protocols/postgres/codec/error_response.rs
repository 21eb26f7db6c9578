//! ErrorResponse (B 'E') and NoticeResponse (B 'N'): typed fields, and the builder for denials.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, write_message},
};

/// SQLSTATE `insufficient_privilege`, used when policy denies a command.
pub const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Parses a field list: `(code byte, string)*` then a zero byte.
fn parse_fields(body: &Bytes) -> Result<Vec<(u8, &str)>, CodecError> {
    let mut r = Reader::new(body);
    let mut fields = Vec::new();
    loop {
        match r.u8()? {
            0 => break,
            code => fields.push((code, r.cstr()?)),
        }
    }
    r.finish()?;
    Ok(fields)
}

fn encode_fields(dst: &mut BytesMut, tag: u8, fields: &[(u8, &str)]) -> Result<(), CodecError> {
    write_message(dst, Some(tag), |dst| {
        for &(code, value) in fields {
            if code == 0 {
                // Would end the list early.
                return Err(CodecError::Malformed {
                    what: "error field code 0",
                });
            }
            dst.put_u8(code);
            put_cstr(dst, value.as_bytes())?;
        }
        dst.put_u8(0);
        Ok(())
    })
}

/// ErrorResponse and NoticeResponse share a layout; this gives both the
/// same accessors.
macro_rules! field_response {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name<'a> {
            /// `(field code, value)` in the order sent; codes are documented
            /// in "Error and Notice Message Fields" (`S`everity, `C`ode,
            /// `M`essage, `D`etail, `H`int, `P`osition, …).
            pub fields: Vec<(u8, &'a str)>,
        }

        impl<'a> $name<'a> {
            /// The message's tag byte.
            pub const TAG: u8 = $tag;

            /// Parses the body. Unknown field codes are kept (the protocol
            /// says to ignore them, the gateway still forwards them).
            pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
                Ok(Self {
                    fields: parse_fields(body)?,
                })
            }

            /// The first field with this code.
            pub fn field(&self, code: u8) -> Option<&'a str> {
                self.fields.iter().find(|(c, _)| *c == code).map(|(_, v)| *v)
            }

            /// Severity, preferring the never-localised `V` field.
            pub fn severity(&self) -> Option<&'a str> {
                self.field(b'V').or_else(|| self.field(b'S'))
            }

            /// SQLSTATE code.
            pub fn code(&self) -> Option<&'a str> {
                self.field(b'C')
            }

            /// Primary message.
            pub fn message(&self) -> Option<&'a str> {
                self.field(b'M')
            }

            /// Detail.
            pub fn detail(&self) -> Option<&'a str> {
                self.field(b'D')
            }

            /// Hint.
            pub fn hint(&self) -> Option<&'a str> {
                self.field(b'H')
            }
        }

        impl Encode for $name<'_> {
            fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
                encode_fields(dst, Self::TAG, &self.fields)
            }
        }
    };
}

field_response!(
    /// ErrorResponse: the command failed (or, with `FATAL`, the session).
    ErrorResponse,
    b'E'
);

field_response!(
    /// NoticeResponse: a warning or notice; the command goes on.
    NoticeResponse,
    b'N'
);

/// Severity of a built error or notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The command is aborted.
    Error,
    /// The session is ended.
    Fatal,
    /// Every session is ended.
    Panic,
    /// Notice severities.
    Warning,
    /// Notice severity.
    Notice,
    /// Notice severity.
    Debug,
    /// Notice severity.
    Info,
    /// Notice severity.
    Log,
}

impl Severity {
    /// The non-localised name clients match on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
            Self::Panic => "PANIC",
            Self::Warning => "WARNING",
            Self::Notice => "NOTICE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Log => "LOG",
        }
    }
}

/// Builder for the errors and notices the gateway itself sends, e.g. a
/// policy denial:
///
/// ```
/// # use chokepoint::protocols::postgres::codec::*;
/// let bytes = ErrorFields::denied("DELETE on payments denied by rule ci-readonly")
///     .with_hint("ask for approval")
///     .to_bytes()
///     .unwrap();
/// assert_eq!(bytes[0], b'E');
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// Written as both `S` and `V`.
    pub severity: Severity,
    /// SQLSTATE, five characters.
    pub code: &'a str,
    /// Primary message.
    pub message: &'a str,
    /// Optional detail.
    pub detail: Option<&'a str>,
    /// Optional hint.
    pub hint: Option<&'a str>,
}

impl<'a> ErrorFields<'a> {
    /// An `ERROR` with this SQLSTATE and message.
    pub fn error(code: &'a str, message: &'a str) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    /// A policy denial: `ERROR`, SQLSTATE 42501 (insufficient_privilege).
    pub fn denied(message: &'a str) -> Self {
        Self::error(SQLSTATE_INSUFFICIENT_PRIVILEGE, message)
    }

    /// Adds a detail.
    pub fn with_detail(self, detail: &'a str) -> Self {
        Self {
            detail: Some(detail),
            ..self
        }
    }

    /// Adds a hint.
    pub fn with_hint(self, hint: &'a str) -> Self {
        Self {
            hint: Some(hint),
            ..self
        }
    }

    fn fields(&self) -> Vec<(u8, &'a str)> {
        let severity = self.severity.as_str();
        let mut fields = vec![
            (b'S', severity),
            (b'V', severity),
            (b'C', self.code),
            (b'M', self.message),
        ];
        fields.extend(self.detail.map(|d| (b'D', d)));
        fields.extend(self.hint.map(|h| (b'H', h)));
        fields
    }

    /// Writes these fields as a NoticeResponse instead.
    pub fn encode_notice_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.check()?;
        encode_fields(dst, NoticeResponse::TAG, &self.fields())
    }

    /// A SQLSTATE is exactly five ASCII digits or upper-case letters;
    /// clients switch on it, so a typo must not reach them.
    fn check(&self) -> Result<(), CodecError> {
        let ok = self.code.len() == 5
            && self
                .code
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if ok {
            Ok(())
        } else {
            Err(CodecError::Malformed {
                what: "SQLSTATE is not five digits or upper-case letters",
            })
        }
    }
}

/// Writes an ErrorResponse.
impl Encode for ErrorFields<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.check()?;
        encode_fields(dst, ErrorResponse::TAG, &self.fields())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture() {
        // `SELECT * FROM nope` on PostgreSQL 16.
        let bytes: &[u8] = b"E\0\0\0\x67SERROR\0VERROR\0C42P01\0\
            Mrelation \"nope\" does not exist\0P15\0Fparse_relation.c\0L1452\0\
            RparserOpenTable\0\0";
        let f = frame(bytes);
        let e = ErrorResponse::parse(f.body()).unwrap();
        assert_eq!(e.severity(), Some("ERROR"));
        assert_eq!(e.code(), Some("42P01"));
        assert_eq!(e.message(), Some("relation \"nope\" does not exist"));
        assert_eq!(e.field(b'P'), Some("15"));
        assert_eq!((e.detail(), e.hint()), (None, None));
        assert_eq!(frame_of(&e).raw(), f.raw());
    }

    #[test]
    fn localized_severity_falls_back() {
        let n = NoticeResponse {
            fields: vec![(b'S', "AVIS"), (b'M', "x")],
        };
        let f = frame_of(&n);
        assert_eq!(f.tag(), b'N');
        let n = NoticeResponse::parse(f.body()).unwrap();
        assert_eq!(n.severity(), Some("AVIS"));
        let n = NoticeResponse {
            fields: vec![(b'S', "AVIS"), (b'V', "NOTICE")],
        };
        assert_eq!(n.severity(), Some("NOTICE"));
    }

    #[test]
    fn deny_builder() {
        let e = ErrorFields::denied("DELETE denied by rule ro")
            .with_detail("table payments")
            .with_hint("request approval");
        let f = frame_of(&e);
        assert_eq!(f.tag(), b'E');
        let parsed = ErrorResponse::parse(f.body()).unwrap();
        assert_eq!(parsed.severity(), Some("ERROR"));
        assert_eq!(parsed.field(b'S'), Some("ERROR"));
        assert_eq!(parsed.code(), Some("42501"));
        assert_eq!(parsed.message(), Some("DELETE denied by rule ro"));
        assert_eq!(parsed.detail(), Some("table payments"));
        assert_eq!(parsed.hint(), Some("request approval"));
        let mut dst = BytesMut::new();
        ErrorFields::error("01000", "careful")
            .encode_notice_into(&mut dst)
            .unwrap();
        assert_eq!(dst[0], b'N');
        // Exact bytes of a minimal denial.
        let expected: &[u8] = b"E\0\0\0\x1eSERROR\0VERROR\0C42501\0Mno\0\0";
        assert_eq!(&ErrorFields::denied("no").to_bytes().unwrap()[..], expected);
    }

    #[test]
    fn builder_refuses_bad_input() {
        assert!(ErrorFields::denied("a\0b").to_bytes().is_err());
        assert!(ErrorFields::error("4250", "x").to_bytes().is_err());
        assert!(ErrorFields::error("4250a", "x").to_bytes().is_err());
        let e = ErrorResponse {
            fields: vec![(0, "x")],
        };
        assert!(e.to_bytes().is_err());
    }

    #[test]
    fn malformed() {
        for body in [
            &b""[..],       // no terminator
            b"SERROR\0",    // no terminator
            b"SERROR",      // missing NUL
            b"SERROR\0\0x", // trailing
            b"M\xff\0\0",   // not UTF-8
            b"\0\0",        // trailing after empty list
        ] {
            assert!(
                ErrorResponse::parse(&Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
            assert!(NoticeResponse::parse(&Bytes::copy_from_slice(body)).is_err());
        }
        // An empty list is valid.
        assert!(ErrorResponse::parse(&Bytes::from_static(b"\0")).is_ok());
    }
}
