//! Simple query (F 'Q'): one string that may hold several statements.
use bytes::{Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, write_message},
};

/// Query: SQL text for the simple query protocol. The gateway also builds
/// these for its own catalog look-ups on the upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query<'a> {
    /// The SQL, possibly several `;`-separated statements.
    pub sql: &'a str,
}

impl<'a> Query<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'Q';

    /// Parses the body. An embedded NUL is refused (as trailing bytes): the
    /// server would reject it too, and the gateway must never decide on a
    /// prefix of what is sent.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let sql = r.cstr()?;
        r.finish()?;
        Ok(Self { sql })
    }
}

impl Encode for Query<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_cstr(dst, self.sql.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture_and_round_trip() {
        let f = frame(b"Q\0\0\0\x0dSELECT 1\0");
        assert_eq!(Query::parse(f.body()).unwrap().sql, "SELECT 1");
        let q = Query {
            sql: "SELECT $$é$$; DELETE FROM t",
        };
        let f = frame_of(&q);
        assert_eq!(Query::parse(f.body()).unwrap(), q);
    }

    #[test]
    fn malformed() {
        for body in [
            &b""[..],
            b"SELECT 1",
            b"SELECT 1\0\0",
            b"SEL\0ECT 1\0",
            b"\xff\0",
        ] {
            assert!(
                Query::parse(&Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
        assert!(Query { sql: "a\0b" }.to_bytes().is_err());
    }
}
