//! Fuzzes the PostgreSQL codec: framing, every parser, and parse → encode identity.
//!
//! Run: `cargo +nightly fuzz run pg_codec` from `fuzz/`.
//!
//! Beyond "never panics", it checks the property the gateway relies on:
//! any message a parser accepts re-encodes to exactly the bytes that were
//! read, so what policy decided on is what gets forwarded; and framing the
//! same stream in arbitrary pieces yields the same frames as all at once.
#![no_main]

use std::borrow::Cow;

use bytes::BytesMut;
use chokepoint::protocols::postgres::codec::{
    BackendMessage, ColumnEdit, DataRow, Encode, Frame, FrameDecoder, FrontendMessage,
    PASSWORD_TAG, PasswordMessage, SaslInitialResponse, SaslResponse, StartupPacket,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size bound and how to split the stream, so
    // the fuzzer also explores TooLarge and partial reads.
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max = 4 + usize::from(control & 0x3f) * 4;
    let chunk = 1 + usize::from(control >> 6) * 7;

    let whole = tagged_frames(stream, max, stream.len().max(1));
    let pieces = tagged_frames(stream, max, chunk);
    assert_eq!(whole, pieces, "framing depends on read sizes");
    for frame in &whole {
        exercise(frame);
    }

    let mut decoder = FrameDecoder::new(max);
    decoder.max_startup_size = max;
    let mut buf = BytesMut::from(stream);
    if let Ok(Some(frame)) = decoder.decode_startup(&mut buf)
        && let Ok(packet) = StartupPacket::parse(&frame)
    {
        assert_eq!(&packet.to_bytes().unwrap(), frame.raw());
    }
});

/// Frames `stream` fed `chunk` bytes at a time, until the decoder refuses
/// it or the input runs out.
fn tagged_frames(stream: &[u8], max: usize, chunk: usize) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
    }
    frames
}

/// Every parser on one frame; whatever parses must re-encode identically.
fn exercise(frame: &Frame) {
    if let Ok(m) = FrontendMessage::parse(frame) {
        assert_eq!(&m.to_bytes().unwrap(), frame.raw(), "{m:?}");
    }
    if let Ok(m) = BackendMessage::parse(frame) {
        assert_eq!(&m.to_bytes().unwrap(), frame.raw(), "{m:?}");
        if let BackendMessage::DataRow(row) = m {
            data_row(frame, row);
        }
    }
    if frame.tag() == PASSWORD_TAG {
        let body = frame.body();
        if let Ok(m) = PasswordMessage::parse(body) {
            assert_eq!(&m.to_bytes().unwrap(), frame.raw());
        }
        if let Ok(m) = SaslInitialResponse::parse(body) {
            assert_eq!(&m.to_bytes().unwrap(), frame.raw());
        }
        if let Ok(m) = SaslResponse::parse(body) {
            assert_eq!(&m.to_bytes().unwrap(), frame.raw());
        }
    }
}

/// Column iteration, rebuilding, and both masking paths.
fn data_row(frame: &Frame, row: DataRow<'_>) {
    assert_eq!(row.columns().count(), row.len());
    assert_eq!(&DataRow::build(row.columns()).unwrap(), frame.raw());
    let all: Vec<usize> = (0..row.len()).collect();
    assert_eq!(row.rewrite(&all, |_, _| ColumnEdit::Keep).unwrap(), None);
    // Masking every value to NULL must give a valid row of the same width.
    let masked = row
        .rewrite(&all, |_, _| ColumnEdit::Replace(None::<Cow<'_, [u8]>>))
        .unwrap();
    if let Some(masked) = masked {
        let mut buf = BytesMut::from(&masked[..]);
        let f = FrameDecoder::new(usize::MAX)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        let BackendMessage::DataRow(m) = BackendMessage::parse(&f).unwrap() else {
            panic!("rewrite did not produce a DataRow");
        };
        assert_eq!(m.len(), row.len());
        assert!(m.columns().all(|c| c.is_none()));
    }
}
