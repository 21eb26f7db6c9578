//! Startup-phase packets (F): StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode, StartupFrame,
    wire::{Reader, put_cstr, write_message},
};

/// Code of a CancelRequest (`1234 << 16 | 5678`).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Code of an SSLRequest (`1234 << 16 | 5679`).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Code of a GSSENCRequest (`1234 << 16 | 5680`).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Shortest cancel key: protocol 3.0's fixed 4 bytes.
pub const MIN_CANCEL_KEY_LEN: usize = 4;
/// Longest cancel key protocol 3.2 allows.
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// Major number shared by the special request codes.
const REQUEST_MAJOR: u16 = 1234;

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupPacket {
    /// Protocol 3.x startup with its parameters.
    Startup(StartupMessage),
    /// Asks to switch to TLS; answered with a single byte `S` or `N`.
    SslRequest,
    /// Asks to switch to GSSAPI encryption; answered with `G` or `N`.
    GssEncRequest,
    /// Cancels the query running on another connection.
    CancelRequest(CancelRequest),
}

/// StartupMessage: protocol version and `name=value` parameters (`user`,
/// `database`, `options`, `application_name`, GUCs, `_pq_.` extensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupMessage {
    /// Protocol major version; only 3 is accepted.
    pub major: u16,
    /// Protocol minor version: 0, or 2 for longer cancel keys (3.2).
    pub minor: u16,
    /// Parameters in the order sent. Names are unique.
    pub params: Vec<(String, String)>,
}

/// CancelRequest: identifies the backend by pid and secret key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelRequest {
    /// Process id from BackendKeyData.
    pub pid: i32,
    /// Secret key from BackendKeyData: 4 bytes in 3.0, up to 256 in 3.2.
    pub secret_key: Bytes,
}

impl StartupPacket {
    /// Parses a startup-phase packet.
    pub fn parse(frame: &StartupFrame) -> Result<Self, CodecError> {
        let code = frame.code();
        let (major, minor) = ((code >> 16) as u16, code as u16);
        let mut r = Reader::new(frame.body());
        let packet = match (major, code) {
            (_, SSL_REQUEST_CODE) => Self::SslRequest,
            (_, GSSENC_REQUEST_CODE) => Self::GssEncRequest,
            (_, CANCEL_REQUEST_CODE) => {
                let pid = r.i32()?;
                let key_len = r.remaining();
                if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&key_len) {
                    return Err(CodecError::Malformed {
                        what: "cancel key length outside 4..=256",
                    });
                }
                Self::CancelRequest(CancelRequest {
                    pid,
                    secret_key: r.rest_shared(),
                })
            }
            (REQUEST_MAJOR, _) => {
                return Err(CodecError::Malformed {
                    what: "unknown startup request code",
                });
            }
            (3, _) => Self::Startup(StartupMessage {
                major,
                minor,
                params: parse_params(&mut r)?,
            }),
            _ => {
                return Err(CodecError::Malformed {
                    what: "unsupported protocol major version",
                });
            }
        };
        r.finish()?;
        Ok(packet)
    }
}

/// `name\0value\0 … \0`. Duplicate names are refused, also when they
/// differ only in case (PostgreSQL matches setting names ignoring case):
/// the server lets the last one win, so a gateway reading the first
/// `user` or `client_encoding` would check another value than it applies.
fn parse_params(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, CodecError> {
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let name = r.cstr()?;
        if name.is_empty() {
            return Ok(params);
        }
        let value = r.cstr()?;
        if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(CodecError::Malformed {
                what: "duplicate startup parameter",
            });
        }
        params.push((name.to_owned(), value.to_owned()));
    }
}

impl StartupMessage {
    /// Protocol 3.0 startup with these parameters.
    pub fn new(params: Vec<(String, String)>) -> Self {
        Self {
            major: 3,
            minor: 0,
            params,
        }
    }

    /// The value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The role to log in as.
    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }

    /// The database; PostgreSQL defaults it to the user name when absent.
    pub fn database(&self) -> Option<&str> {
        self.param("database")
    }
}

impl Encode for StartupMessage {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, None, |dst| {
            dst.put_u16(self.major);
            dst.put_u16(self.minor);
            for (name, value) in &self.params {
                if name.is_empty() {
                    // An empty name would end the list early.
                    return Err(CodecError::Malformed {
                        what: "empty startup parameter name",
                    });
                }
                put_cstr(dst, name.as_bytes())?;
                put_cstr(dst, value.as_bytes())?;
            }
            dst.put_u8(0);
            Ok(())
        })
    }
}

impl Encode for CancelRequest {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&self.secret_key.len()) {
            return Err(CodecError::Malformed {
                what: "cancel key length outside 4..=256",
            });
        }
        write_message(dst, None, |dst| {
            dst.put_u32(CANCEL_REQUEST_CODE);
            dst.put_i32(self.pid);
            dst.put_slice(&self.secret_key);
            Ok(())
        })
    }
}

impl Encode for StartupPacket {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Self::Startup(m) => m.encode_into(dst),
            Self::CancelRequest(c) => c.encode_into(dst),
            Self::SslRequest => write_message(dst, None, |dst| {
                dst.put_u32(SSL_REQUEST_CODE);
                Ok(())
            }),
            Self::GssEncRequest => write_message(dst, None, |dst| {
                dst.put_u32(GSSENC_REQUEST_CODE);
                Ok(())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::FrameDecoder;

    fn parse(bytes: &[u8]) -> Result<StartupPacket, CodecError> {
        let mut buf = BytesMut::from(bytes);
        let frame = FrameDecoder::default()
            .decode_startup(&mut buf)?
            .ok_or(CodecError::Truncated)?;
        assert!(buf.is_empty(), "test input has extra bytes");
        StartupPacket::parse(&frame)
    }

    fn round_trip(p: &StartupPacket) {
        let bytes = p.to_bytes().unwrap();
        assert_eq!(&parse(&bytes).unwrap(), p);
    }

    #[test]
    fn psql_startup_capture() {
        // As psql 16 sends it (protocol 3.0).
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 3, 0, 0]);
        body.extend_from_slice(
            b"user\0ci\0database\0app\0application_name\0psql\0client_encoding\0UTF8\0\0",
        );
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        let StartupPacket::Startup(m) = parse(&packet).unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.user(), Some("ci"));
        assert_eq!(m.database(), Some("app"));
        assert_eq!(m.param("client_encoding"), Some("UTF8"));
        assert_eq!(m.param("nope"), None);
        assert_eq!(&m.to_bytes().unwrap()[..], &packet[..]);
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            parse(b"\0\0\0\x08\x04\xd2\x16\x2f").unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse(b"\0\0\0\x08\x04\xd2\x16\x30").unwrap(),
            StartupPacket::GssEncRequest
        );
        let c = parse(b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x30\x39\xde\xad\xbe\xef").unwrap();
        assert_eq!(
            c,
            StartupPacket::CancelRequest(CancelRequest {
                pid: 12345,
                secret_key: Bytes::from_static(b"\xde\xad\xbe\xef"),
            })
        );
    }

    #[test]
    fn round_trips() {
        round_trip(&StartupPacket::Startup(StartupMessage::new(vec![
            ("user".into(), "u".into()),
            ("database".into(), "d".into()),
        ])));
        round_trip(&StartupPacket::Startup(StartupMessage {
            major: 3,
            minor: 2,
            params: vec![],
        }));
        round_trip(&StartupPacket::SslRequest);
        round_trip(&StartupPacket::GssEncRequest);
        for len in [4, 32, 256] {
            round_trip(&StartupPacket::CancelRequest(CancelRequest {
                pid: -7,
                secret_key: Bytes::from(vec![9; len]),
            }));
        }
    }

    /// Prepends the length field.
    fn pkt(content: &[u8]) -> Vec<u8> {
        let mut p = ((content.len() + 4) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(content);
        p
    }

    #[test]
    fn malformed() {
        let mut long_cancel = b"\x04\xd2\x16\x2e\0\0\0\x01".to_vec();
        long_cancel.extend_from_slice(&[0; 257]);
        let cases: &[&[u8]] = &[
            // SSLRequest with a trailing byte.
            b"\x04\xd2\x16\x2f\0",
            // Unknown 1234.x request.
            b"\x04\xd2\x16\x31",
            // Protocol 2.0 and 4.0.
            b"\0\x02\0\0\0",
            b"\0\x04\0\0\0",
            // Cancel: no key, 3-byte key, 257-byte key, too short for the pid.
            b"\x04\xd2\x16\x2e\0\0\0\x01",
            b"\x04\xd2\x16\x2e\0\0\0\x01abc",
            &long_cancel,
            b"\x04\xd2\x16\x2e\0\0",
            // Startup: no parameters and no terminator.
            b"\0\x03\0\0",
            // Without the final terminator.
            b"\0\x03\0\0user\0u\0",
            // Name without value.
            b"\0\x03\0\0user\0",
            // Missing NUL entirely.
            b"\0\x03\0\0user",
            // Bytes after the terminator.
            b"\0\x03\0\0user\0u\0\0x",
            // Non-UTF-8 value and name.
            b"\0\x03\0\0user\0\xff\0\0",
            b"\0\x03\0\0\xc3\0u\0\0",
            // Duplicate user.
            b"\0\x03\0\0user\0a\0user\0b\0\0",
            // The same setting in two cases: the server applies the last.
            b"\0\x03\0\0user\0a\0client_encoding\0UTF8\0CLIENT_ENCODING\0SJIS\0\0",
        ];
        for (i, case) in cases.iter().enumerate() {
            let err = parse(&pkt(case)).unwrap_err();
            // Every case is complete, so none may be mistaken for a short read.
            assert!(
                !matches!(err, CodecError::Truncated) || i == 7,
                "case {i}: {err}"
            );
        }
        // Length field below 8, and negative.
        assert!(matches!(
            parse(b"\0\0\0\x04\0\0\0\0"),
            Err(CodecError::BadLength)
        ));
        assert!(matches!(
            parse(b"\xff\xff\xff\xf8"),
            Err(CodecError::BadLength)
        ));
    }

    #[test]
    fn builders_refuse_unrepresentable() {
        let m = StartupMessage::new(vec![("user".into(), "a\0b".into())]);
        let mut dst = BytesMut::from(&b"keep"[..]);
        assert!(m.encode_into(&mut dst).is_err());
        assert_eq!(&dst[..], b"keep", "nothing half-written");
        assert!(
            StartupMessage::new(vec![(String::new(), "x".into())])
                .to_bytes()
                .is_err()
        );
        let c = CancelRequest {
            pid: 1,
            secret_key: Bytes::from_static(b"abc"),
        };
        assert!(c.to_bytes().is_err());
    }
}
