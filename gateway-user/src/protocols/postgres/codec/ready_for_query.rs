//! ReadyForQuery (B 'Z'): the server is idle, with the transaction status.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, write_message},
};

/// Transaction status carried by ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (commands refused until rollback).
    Failed,
}

impl TransactionStatus {
    /// The wire byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

/// ReadyForQuery: marks the end of a query cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyForQuery {
    /// Where the session's transaction stands.
    pub status: TransactionStatus,
}

impl ReadyForQuery {
    /// The message's tag byte.
    pub const TAG: u8 = b'Z';

    /// Parses the body.
    pub fn parse(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let status = match r.u8()? {
            b'I' => TransactionStatus::Idle,
            b'T' => TransactionStatus::InTransaction,
            b'E' => TransactionStatus::Failed,
            _ => {
                return Err(CodecError::Malformed {
                    what: "transaction status is not I, T or E",
                });
            }
        };
        r.finish()?;
        Ok(Self { status })
    }
}

impl Encode for ReadyForQuery {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_u8(self.status.as_byte());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::frame;

    #[test]
    fn capture_and_round_trip() {
        for (byte, status) in [
            (b'I', TransactionStatus::Idle),
            (b'T', TransactionStatus::InTransaction),
            (b'E', TransactionStatus::Failed),
        ] {
            let f = frame(&[b'Z', 0, 0, 0, 5, byte]);
            let z = ReadyForQuery::parse(f.body()).unwrap();
            assert_eq!(z.status, status);
            assert_eq!(&z.to_bytes().unwrap(), f.raw());
        }
    }

    #[test]
    fn malformed() {
        for body in [&b""[..], b"X", b"II", b"i"] {
            assert!(ReadyForQuery::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
