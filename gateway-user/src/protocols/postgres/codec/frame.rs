//! Framing: splits a byte stream into whole messages without copying them.
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::CodecError;

/// Default bound on a message's length field. PostgreSQL itself accepts up
/// to 1 GiB, but every buffer here is per connection; 64 MiB admits large
/// rows and COPY chunks while keeping a hostile peer from pinning memory.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Default bound on a startup-phase packet, PostgreSQL's own
/// `MAX_STARTUP_PACKET_LENGTH`.
pub const DEFAULT_MAX_STARTUP_SIZE: usize = 10_000;

/// Bytes asked of the socket per read once the buffer is full: keeps small
/// messages from costing one syscall each without unbounded read-ahead.
const READ_CHUNK: usize = 8 * 1024;

/// One tagged message: `tag`, Int32 length (including itself), body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    tag: u8,
    /// Everything after the tag and the length field; a view into `raw`.
    body: Bytes,
    /// The whole message as read.
    raw: Bytes,
}

impl Frame {
    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// The body: everything after the tag and the length field. Parsers
    /// borrow from it, and `clone`/`slice` it for payloads that must outlive
    /// the frame.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The original message bytes (tag, length, body), to forward unchanged.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Gives up the frame for its original bytes.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Appends the original message to `dst` (a copy; prefer writing
    /// [`Frame::raw`] directly when the socket takes `Bytes`).
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.extend_from_slice(&self.raw);
    }
}

/// One startup-phase packet: Int32 length (including itself), Int32 code
/// (protocol version or a special request code), rest. It has no tag: it is
/// the first thing a client sends, and again after an SSL/GSS refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupFrame {
    code: u32,
    /// Everything after the code; a view into `raw`.
    body: Bytes,
    raw: Bytes,
}

impl StartupFrame {
    /// The protocol version (`major << 16 | minor`) or request code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// Everything after the code.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The original packet bytes, to forward unchanged.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Gives up the frame for its original bytes.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }
}

/// The whole length of the tagged message `buf` starts with, when its
/// header has arrived and the rest has not: what the buffer will have to
/// hold before the message can be decoded.
pub fn pending_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..5)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let total = len.checked_add(1)?;
    (total > buf.len()).then_some(total)
}

/// Splits a buffer into frames, refusing lengths over the configured bounds
/// before buffering anything for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameDecoder {
    /// Largest accepted value of a tagged message's length field.
    pub max_message_size: usize,
    /// Largest accepted length of a startup-phase packet.
    pub max_startup_size: usize,
}

/// How much room [`FrameDecoder::decode`] makes ahead of the bytes that
/// have arrived.
const RESERVE_AHEAD: usize = 64 * 1024;

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl FrameDecoder {
    /// A decoder bounding tagged messages to `max_message_size` (the length
    /// field's value) and startup packets to [`DEFAULT_MAX_STARTUP_SIZE`].
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            max_startup_size: DEFAULT_MAX_STARTUP_SIZE,
        }
    }

    /// Takes one tagged message off the front of `buf`, or returns `None`
    /// (having reserved room for the rest) when it is not all there yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(header) = buf.get(..5) else {
            return Ok(None);
        };
        let tag = header[0];
        let len = length(&header[1..5], 4, self.max_message_size)?;
        // The tag is outside the length.
        let total = len + 1;
        if buf.len() < total {
            // Room for what comes next, not for all the header promises: a
            // job declaring 16 MiB messages on a thousand connections and
            // sending nothing more must not make the gateway hold 16 GiB.
            // The buffer grows (doubling) as the bytes actually arrive.
            buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let raw = buf.split_to(total).freeze();
        let body = raw.slice(5..);
        Ok(Some(Frame { tag, body, raw }))
    }

    /// Takes one startup-phase packet off the front of `buf`, or returns
    /// `None` when it is not all there yet.
    pub fn decode_startup(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<StartupFrame>, CodecError> {
        let Some(header) = buf.get(..4) else {
            return Ok(None);
        };
        // A packet must at least carry its code.
        let len = length(header, 8, self.max_startup_size)?;
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let raw = buf.split_to(len).freeze();
        let code = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let body = raw.slice(8..);
        Ok(Some(StartupFrame { code, body, raw }))
    }
}

/// Reads and checks an Int32 length field.
fn length(field: &[u8], min: usize, max: usize) -> Result<usize, CodecError> {
    let mut be = [0; 4];
    be.copy_from_slice(field);
    let len = usize::try_from(i32::from_be_bytes(be)).map_err(|_| CodecError::BadLength)?;
    if len < min {
        return Err(CodecError::BadLength);
    }
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads until one tagged message is complete. `Ok(None)` on end of stream
/// at a message boundary; [`CodecError::Truncated`] if it ends inside one.
///
/// Cancel safe as long as `buf` is kept between calls: bytes already read
/// stay in `buf`, so it can sit in a `select!`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, CodecError> {
    read_with(reader, buf, |buf| decoder.decode(buf)).await
}

/// [`read_frame`] for the startup phase.
pub async fn read_startup_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> Result<Option<StartupFrame>, CodecError> {
    read_with(reader, buf, |buf| decoder.decode_startup(buf)).await
}

/// Reads until `decode` yields a frame; the shared loop of both phases.
async fn read_with<R: AsyncRead + Unpin, F>(
    reader: &mut R,
    buf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<F>, CodecError>,
) -> Result<Option<F>, CodecError> {
    loop {
        if let Some(frame) = decode(buf)? {
            return Ok(Some(frame));
        }
        if !fill(reader, buf).await? {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(CodecError::Truncated)
            };
        }
    }
}

/// One read into `buf`; false at end of stream.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<bool, CodecError> {
    if buf.capacity() == buf.len() {
        buf.reserve(READ_CHUNK);
    }
    Ok(reader.read_buf(buf).await? != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn splits_back_to_back_messages_without_copying() {
        // ParseComplete, then Query "x".
        let mut b = buf(b"1\0\0\0\x04Q\0\0\0\x06x\0Z");
        let base = b.as_ptr();
        let mut d = FrameDecoder::default();
        let f1 = d.decode(&mut b).unwrap().unwrap();
        assert_eq!((f1.tag(), &f1.body()[..]), (b'1', &b""[..]));
        let f2 = d.decode(&mut b).unwrap().unwrap();
        assert_eq!((f2.tag(), &f2.body()[..]), (b'Q', &b"x\0"[..]));
        assert_eq!(&f2.raw()[..], b"Q\0\0\0\x06x\0");
        // Same allocation: the frame is a view, not a copy.
        assert_eq!(f2.raw().as_ptr(), base.wrapping_add(5));
        // The remainder stays buffered.
        assert_eq!(d.decode(&mut b).unwrap(), None);
        assert_eq!(&b[..], b"Z");
    }

    #[test]
    fn waits_for_partial_header_and_body() {
        let mut d = FrameDecoder::default();
        let full = b"Q\0\0\0\x09abcd\0";
        for cut in 0..full.len() {
            let mut b = buf(&full[..cut]);
            assert_eq!(d.decode(&mut b).unwrap(), None, "cut at {cut}");
            assert_eq!(b.len(), cut, "nothing consumed");
            b.extend_from_slice(&full[cut..]);
            assert_eq!(d.decode(&mut b).unwrap().unwrap().raw().as_ref(), full);
        }
    }

    #[test]
    fn rejects_lengths_below_four_and_negative() {
        let mut d = FrameDecoder::default();
        for len in [0i32, 1, 3, -1, i32::MIN] {
            let mut b = buf(b"Q");
            b.extend_from_slice(&len.to_be_bytes());
            assert!(
                matches!(d.decode(&mut b), Err(CodecError::BadLength)),
                "{len}"
            );
        }
    }

    #[test]
    fn the_pending_length_is_known_from_the_header_until_the_message_is_whole() {
        assert_eq!(pending_len(b"Q\x00\x00"), None, "no header yet");
        assert_eq!(pending_len(b"Q\x00\x10\x00\x00xyz"), Some(0x10_0001));
        let mut whole = b"Q\x00\x00\x00\x05x".to_vec();
        assert_eq!(pending_len(&whole), None, "whole");
        whole.extend_from_slice(b"Q\x00");
        assert_eq!(
            pending_len(&whole),
            None,
            "decoded first, then the next header"
        );
        assert_eq!(pending_len(b"Q\xff\xff\xff\xff"), Some(1 << 32));
    }

    #[test]
    fn a_header_alone_reserves_room_for_what_comes_next_not_all_it_announces() {
        let mut d = FrameDecoder::new(16 << 20);
        let mut b = buf(b"Q\x00\xff\xff\xff");
        assert!(d.decode(&mut b).unwrap().is_none());
        assert!(b.capacity() <= RESERVE_AHEAD + 5, "{}", b.capacity());
        // As the bytes come, the message still arrives whole.
        let body = vec![b'x'; 0x00ff_ffff - 4];
        for chunk in body.chunks(RESERVE_AHEAD) {
            assert!(d.decode(&mut b).unwrap().is_none());
            b.extend_from_slice(chunk);
        }
        assert_eq!(d.decode(&mut b).unwrap().unwrap().body().len(), body.len());
    }

    #[test]
    fn rejects_oversized_before_buffering() {
        let mut d = FrameDecoder::new(100);
        let mut b = buf(b"d\0\0\0\x65");
        assert!(matches!(
            d.decode(&mut b),
            Err(CodecError::TooLarge { len: 101, max: 100 })
        ));
        // Nothing reserved for the announced body.
        assert!(b.capacity() < 101);
        // Exactly the maximum is fine.
        let mut b = buf(b"d\0\0\0\x64");
        b.extend_from_slice(&[7; 96]);
        assert_eq!(d.decode(&mut b).unwrap().unwrap().body().len(), 96);
    }

    #[test]
    fn startup_packets() {
        let mut d = FrameDecoder::default();
        // SSLRequest.
        let mut b = buf(b"\0\0\0\x08\x04\xd2\x16\x2fQ");
        let f = d.decode_startup(&mut b).unwrap().unwrap();
        assert_eq!(f.code(), 80_877_103);
        assert!(f.body().is_empty());
        assert_eq!(&b[..], b"Q");
        // Too short to hold a code.
        for len in [0i32, 4, 7, -8] {
            let mut b = buf(&len.to_be_bytes());
            assert!(
                matches!(d.decode_startup(&mut b), Err(CodecError::BadLength)),
                "{len}"
            );
        }
        let mut b = buf(&10_001i32.to_be_bytes());
        assert!(matches!(
            d.decode_startup(&mut b),
            Err(CodecError::TooLarge {
                len: 10_001,
                max: 10_000
            })
        ));
        let mut b = buf(b"\0\0\0\x0c\0\x03\0\0us");
        assert_eq!(d.decode_startup(&mut b).unwrap(), None);
    }

    #[tokio::test]
    async fn read_frame_eof_handling() {
        let mut d = FrameDecoder::default();
        // Two messages split across reads, then a clean EOF.
        let (mut client, mut server) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client
                .write_all(b"S\0\0\0\x04Q\0\0\0\x06x\0")
                .await
                .unwrap();
        });
        let mut b = BytesMut::new();
        let f = read_frame(&mut server, &mut b, &mut d)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.tag(), b'S');
        let f = read_frame(&mut server, &mut b, &mut d)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.tag(), b'Q');
        writer.await.unwrap();
        assert!(
            read_frame(&mut server, &mut b, &mut d)
                .await
                .unwrap()
                .is_none()
        );

        // EOF inside a message.
        let mut r: &[u8] = b"Q\0\0\0\x06x";
        let mut b = BytesMut::new();
        assert!(matches!(
            read_frame(&mut r, &mut b, &mut d).await,
            Err(CodecError::Truncated)
        ));
        // EOF inside a header.
        let mut r: &[u8] = b"Q\0";
        let mut b = BytesMut::new();
        assert!(matches!(
            read_frame(&mut r, &mut b, &mut d).await,
            Err(CodecError::Truncated)
        ));
    }

    #[tokio::test]
    async fn read_startup_frame_then_tagged() {
        let mut d = FrameDecoder::default();
        let mut r: &[u8] = b"\0\0\0\x08\x04\xd2\x16\x30X\0\0\0\x04";
        let mut b = BytesMut::new();
        let s = read_startup_frame(&mut r, &mut b, &mut d)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.code(), 80_877_104);
        let f = read_frame(&mut r, &mut b, &mut d).await.unwrap().unwrap();
        assert_eq!(f.tag(), b'X');
        assert!(
            read_startup_frame(&mut r, &mut b, &mut d)
                .await
                .unwrap()
                .is_none()
        );
        let mut r: &[u8] = b"\0\0\0\x10\0\x03";
        assert!(matches!(
            read_startup_frame(&mut r, &mut BytesMut::new(), &mut d).await,
            Err(CodecError::Truncated)
        ));
    }
}
