//! BackendKeyData (B 'K'): the pid and secret a client needs to cancel its queries.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode, MAX_CANCEL_KEY_LEN, MIN_CANCEL_KEY_LEN,
    wire::{Reader, write_message},
};

/// BackendKeyData. The gateway replaces it with its own key towards the
/// client, so a job can only cancel through the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendKeyData {
    /// Backend process id.
    pub pid: i32,
    /// Secret key: 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub secret_key: Bytes,
}

impl BackendKeyData {
    /// The message's tag byte.
    pub const TAG: u8 = b'K';

    /// Parses the body.
    pub fn parse(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let pid = r.i32()?;
        if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&r.remaining()) {
            return Err(CodecError::Malformed {
                what: "cancel key length outside 4..=256",
            });
        }
        let secret_key = r.rest_shared();
        Ok(Self { pid, secret_key })
    }
}

impl Encode for BackendKeyData {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&self.secret_key.len()) {
            return Err(CodecError::Malformed {
                what: "cancel key length outside 4..=256",
            });
        }
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_i32(self.pid);
            dst.put_slice(&self.secret_key);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture_and_round_trip() {
        let f = frame(b"K\0\0\0\x0c\0\0\x30\x39\x12\x34\x56\x78");
        let k = BackendKeyData::parse(f.body()).unwrap();
        assert_eq!(k.pid, 12345);
        assert_eq!(&k.secret_key[..], b"\x12\x34\x56\x78");
        assert_eq!(frame_of(&k).raw(), f.raw());
        let long = BackendKeyData {
            pid: 1,
            secret_key: Bytes::from(vec![0xab; 32]),
        };
        assert_eq!(BackendKeyData::parse(frame_of(&long).body()).unwrap(), long);
    }

    #[test]
    fn malformed() {
        for key_len in [0, 3, 257] {
            let mut body = vec![0, 0, 0, 1];
            body.extend(std::iter::repeat_n(7, key_len));
            assert!(
                BackendKeyData::parse(&Bytes::from(body)).is_err(),
                "{key_len}"
            );
        }
        assert!(BackendKeyData::parse(&Bytes::from_static(b"\0\0")).is_err());
        let k = BackendKeyData {
            pid: 1,
            secret_key: Bytes::from_static(b"abc"),
        };
        assert!(k.to_bytes().is_err());
    }
}
