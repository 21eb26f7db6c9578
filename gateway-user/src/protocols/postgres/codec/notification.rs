//! NotificationResponse (B 'A'): a NOTIFY delivered to a LISTENing session.
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CodecError, Encode,
    wire::{Reader, put_cstr, write_message},
};

/// NotificationResponse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotificationResponse<'a> {
    /// Pid of the notifying backend.
    pub pid: i32,
    /// Channel name.
    pub channel: &'a str,
    /// Payload (possibly empty).
    pub payload: &'a str,
}

impl<'a> NotificationResponse<'a> {
    /// The message's tag byte.
    pub const TAG: u8 = b'A';

    /// Parses the body.
    pub fn parse(body: &'a Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        let pid = r.i32()?;
        let channel = r.cstr()?;
        let payload = r.cstr()?;
        r.finish()?;
        Ok(Self {
            pid,
            channel,
            payload,
        })
    }
}

impl Encode for NotificationResponse<'_> {
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_message(dst, Some(Self::TAG), |dst| {
            dst.put_i32(self.pid);
            put_cstr(dst, self.channel.as_bytes())?;
            put_cstr(dst, self.payload.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::codec::tests::{frame, frame_of};

    #[test]
    fn capture_and_round_trip() {
        let f = frame(b"A\0\0\0\x16\0\0\x30\x39approvals\0id1\0");
        let n = NotificationResponse::parse(f.body()).unwrap();
        assert_eq!((n.pid, n.channel, n.payload), (12345, "approvals", "id1"));
        assert_eq!(frame_of(&n).raw(), f.raw());
    }

    #[test]
    fn malformed() {
        for body in [
            &b"\0\0\0"[..],
            b"\0\0\0\x01c\0",
            b"\0\0\0\x01c\0p",
            b"\0\0\0\x01c\0p\0x",
        ] {
            assert!(NotificationResponse::parse(&Bytes::copy_from_slice(body)).is_err());
        }
    }
}
