//! CommandComplete (B 'C'): a statement finished, with its command tag.
use bytes::{Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, write_message},
};

/// CommandComplete: the command tag, e.g. `SELECT 3`, `INSERT 0 1`,
/// `DELETE 10`, `CREATE TABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandComplete<'a> {
    /// The whole tag text.
    pub tag: &'a str,
}

impl<'a> CommandComplete<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'C';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let tag = r.cstr()?;
        r.finish()?;
        Ok(Self { tag })
    }

    /// The command word(s) without the counts: `SELECT`, `INSERT`,
    /// `CREATE TABLE`.
    pub fn command(&self) -> &'a str {
        match self.tag.rsplit_once(' ') {
            Some((head, last)) if is_count(last) => {
                // INSERT carries an OID before the row count.
                match head.rsplit_once(' ') {
                    Some((cmd, oid)) if is_count(oid) && cmd == "INSERT" => cmd,
                    _ => head,
                }
            }
            _ => self.tag,
        }
    }

    /// Rows affected or returned, for tags that carry a count.
    pub fn rows(&self) -> Option<u64> {
        let (_, last) = self.tag.rsplit_once(' ')?;
        if is_count(last) {
            last.parse().ok()
        } else {
            None
        }
    }
}

fn is_count(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl Encode for CommandComplete<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            put_cstr(dst, self.tag.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture_and_round_trip() {
        let f = frame(b"C\0\0\0\x0dSELECT 3\0");
        let c = CommandComplete::parse(f.body()).unwrap();
        assert_eq!(
            (c.tag, c.command(), c.rows()),
            ("SELECT 3", "SELECT", Some(3))
        );
        assert_eq!(frame_of(&c).raw(), f.raw());
    }

    #[test]
    fn command_and_rows() {
        for (tag, cmd, rows) in [
            ("INSERT 0 5", "INSERT", Some(5)),
            ("DELETE 10", "DELETE", Some(10)),
            ("COPY 18446744073709551615", "COPY", Some(u64::MAX)),
            ("COPY 18446744073709551616", "COPY", None),
            ("CREATE TABLE", "CREATE TABLE", None),
            ("BEGIN", "BEGIN", None),
            ("", "", None),
        ] {
            let c = CommandComplete { tag };
            assert_eq!((c.command(), c.rows()), (cmd, rows), "{tag}");
        }
    }

    #[test]
    fn malformed() {
        for body in [&b"SELECT 3"[..], b"SELECT 3\0\0", b"\xfe\0"] {
            assert!(CommandComplete::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
