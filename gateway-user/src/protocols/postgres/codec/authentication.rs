//! Authentication requests (B 'R'): Ok, cleartext, MD5, SASL/SCRAM and the GSS family.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, write_message},
};

/// An authentication request from the server, or the final Ok.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// 0: authentication succeeded.
    Ok,
    /// 2: Kerberos V5 (long unsupported by PostgreSQL; parsed to refuse it).
    KerberosV5,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send `md5(md5(password || user) || salt)`.
    Md5Password {
        /// Random salt for this exchange.
        salt: [u8; 4],
    },
    /// 6: SCM credentials (Unix-socket only, long removed).
    ScmCredential,
    /// 7: start GSSAPI.
    Gss,
    /// 8: GSSAPI or SSPI continuation data.
    GssContinue {
        /// Mechanism data.
        data: Bytes,
    },
    /// 9: start SSPI.
    Sspi,
    /// 10: SASL, with the mechanisms the server offers (in its order).
    Sasl {
        /// e.g. `SCRAM-SHA-256`, `SCRAM-SHA-256-PLUS`.
        mechanisms: Vec<&'a str>,
    },
    /// 11: SASL challenge (SCRAM server-first).
    SaslContinue {
        /// Mechanism data.
        data: Bytes,
    },
    /// 12: SASL outcome (SCRAM server-final, with the server signature).
    SaslFinal {
        /// Mechanism data.
        data: Bytes,
    },
}

impl<'a> Authentication<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'R';

    /// Parses the body. Unknown request codes are refused, since the
    /// gateway cannot know what the client would be asked to reveal.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let auth = match r.i32()? {
            0 => Self::Ok,
            2 => Self::KerberosV5,
            3 => Self::CleartextPassword,
            5 => {
                let mut salt = [0; 4];
                salt.copy_from_slice(r.bytes(4)?);
                Self::Md5Password { salt }
            }
            6 => Self::ScmCredential,
            7 => Self::Gss,
            8 => Self::GssContinue {
                data: r.rest_shared(),
            },
            9 => Self::Sspi,
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                Self::Sasl { mechanisms }
            }
            11 => Self::SaslContinue {
                data: r.rest_shared(),
            },
            12 => Self::SaslFinal {
                data: r.rest_shared(),
            },
            _ => {
                return Err(CodecError::Malformed {
                    what: "unknown authentication request code",
                });
            }
        };
        r.finish()?;
        Ok(auth)
    }

    /// The request code on the wire.
    pub fn code(&self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::KerberosV5 => 2,
            Self::CleartextPassword => 3,
            Self::Md5Password { .. } => 5,
            Self::ScmCredential => 6,
            Self::Gss => 7,
            Self::GssContinue { .. } => 8,
            Self::Sspi => 9,
            Self::Sasl { .. } => 10,
            Self::SaslContinue { .. } => 11,
            Self::SaslFinal { .. } => 12,
        }
    }
}

impl Encode for Authentication<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_i32(self.code());
            match self {
                Self::Md5Password { salt } => dst.put_slice(salt),
                Self::GssContinue { data }
                | Self::SaslContinue { data }
                | Self::SaslFinal { data } => dst.put_slice(data),
                Self::Sasl { mechanisms } => {
                    for m in mechanisms {
                        if m.is_empty() {
                            // Would end the list early.
                            return Err(CodecError::Malformed {
                                what: "empty SASL mechanism name",
                            });
                        }
                        put_cstr(dst, m.as_bytes())?;
                    }
                    dst.put_u8(0);
                }
                Self::Ok
                | Self::KerberosV5
                | Self::CleartextPassword
                | Self::ScmCredential
                | Self::Gss
                | Self::Sspi => {}
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
    fn captures() {
        let cases: &[(&[u8], Authentication<'_>)] = &[
            (b"R\0\0\0\x08\0\0\0\0", Authentication::Ok),
            (b"R\0\0\0\x08\0\0\0\x03", Authentication::CleartextPassword),
            (
                b"R\0\0\0\x0c\0\0\0\x05\x9a\x1b\xc4\x07",
                Authentication::Md5Password {
                    salt: [0x9a, 0x1b, 0xc4, 0x07],
                },
            ),
            (
                b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
                Authentication::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
                },
            ),
            (
                b"R\0\0\0\x0e\0\0\0\x0cv=abc=",
                Authentication::SaslFinal {
                    data: Bytes::from_static(b"v=abc="),
                },
            ),
        ];
        for (bytes, want) in cases {
            let f = frame(bytes);
            assert_eq!(&Authentication::parse(f.body()).unwrap(), want);
            assert_eq!(frame_of(want).raw(), f.raw());
        }
    }

    #[test]
    fn round_trips() {
        let all = [
            Authentication::Ok,
            Authentication::KerberosV5,
            Authentication::CleartextPassword,
            Authentication::Md5Password { salt: [1, 2, 3, 4] },
            Authentication::ScmCredential,
            Authentication::Gss,
            Authentication::GssContinue {
                data: Bytes::from_static(b"\0tok"),
            },
            Authentication::Sspi,
            Authentication::Sasl { mechanisms: vec![] },
            Authentication::SaslContinue {
                data: Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096"),
            },
            Authentication::SaslFinal { data: Bytes::new() },
        ];
        for a in all {
            let f = frame_of(&a);
            assert_eq!(Authentication::parse(f.body()).unwrap(), a);
        }
    }

    #[test]
    fn malformed() {
        for body in [
            &b""[..],
            b"\0\0\0",
            b"\0\0\0\0\0",                     // Ok with trailing byte
            b"\0\0\0\x03x",                    // cleartext with data
            b"\0\0\0\x05\x01\x02\x03",         // short salt
            b"\0\0\0\x05\x01\x02\x03\x04\x05", // long salt
            b"\0\0\0\x0aSCRAM-SHA-256\0",      // unterminated list
            b"\0\0\0\x0aSCRAM-SHA-256",        // missing NUL
            b"\0\0\0\x0aSCRAM\0\0x",           // trailing after list
            b"\0\0\0\x0a\xff\0\0",             // non-UTF-8 mechanism
            b"\0\0\0\x04",                     // unknown code
            b"\xff\xff\xff\xff",               // negative code
        ] {
            assert!(
                Authentication::parse(&Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
        let a = Authentication::Sasl {
            mechanisms: vec!["A", ""],
        };
        assert!(a.to_bytes().is_err());
    }
}
