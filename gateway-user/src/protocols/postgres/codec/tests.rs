//! Cross-message tests: shared helpers and property-style robustness checks.
use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use super::*;

/// Frames exactly one complete message.
pub(crate) fn frame(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = FrameDecoder::default()
        .decode(&mut buf)
        .expect("valid framing")
        .expect("complete message");
    assert!(buf.is_empty(), "{} bytes after the message", buf.len());
    frame
}

/// Builds a message and frames it.
pub(crate) fn frame_of(m: &impl Encode) -> Frame {
    frame(&m.to_bytes().expect("encodable"))
}

/// SplitMix64: a tiny deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every parser on one tagged frame. Whatever parses must re-encode to the
/// identical bytes: the gateway's view is exactly what gets forwarded.
/// Returns how many parsers accepted it.
fn exercise_frame(f: &Frame) -> usize {
    let mut accepted = 0;
    if let Ok(m) = FrontendMessage::parse(f) {
        accepted += 1;
        assert_eq!(&m.to_bytes().unwrap(), f.raw(), "frontend {m:?}");
    }
    if let Ok(m) = BackendMessage::parse(f) {
        accepted += 1;
        assert_eq!(&m.to_bytes().unwrap(), f.raw(), "backend {m:?}");
        if let BackendMessage::DataRow(row) = m {
            let n = row.columns().count();
            assert_eq!(n, row.len());
            let rebuilt = DataRow::build(row.columns()).unwrap();
            assert_eq!(&rebuilt, f.raw());
            // Reverse the first and last values: same lengths, and a change
            // unless both read the same backwards.
            let reversed = |v: &[u8]| v.iter().rev().copied().collect::<Vec<u8>>();
            let targets = [0, n.saturating_sub(1)];
            let changes = targets
                .iter()
                .any(|&i| matches!(row.column(i), Some(Some(v)) if reversed(v) != v));
            let out = row
                .rewrite(&targets, |_, v| {
                    ColumnEdit::Replace(v.map(|v| Cow::Owned(reversed(v))))
                })
                .unwrap();
            assert_eq!(out.is_some(), changes);
            if let Some(out) = out {
                assert_eq!(out.len(), f.raw().len());
                let out = frame(&out);
                let rewritten = DataRow::parse(out.body()).unwrap();
                assert_eq!(rewritten.len(), n);
                assert_eq!(
                    rewritten.column(0).map(|c| c.map(<[u8]>::to_vec)),
                    row.column(0).map(|c| c.map(reversed))
                );
            }
        }
    }
    if f.tag() == PASSWORD_TAG {
        let body = f.body();
        if let Ok(m) = PasswordMessage::parse(body) {
            accepted += 1;
            assert_eq!(&m.to_bytes().unwrap(), f.raw());
        }
        if let Ok(m) = SaslInitialResponse::parse(body) {
            accepted += 1;
            assert_eq!(&m.to_bytes().unwrap(), f.raw());
        }
        if let Ok(m) = SaslResponse::parse(body) {
            accepted += 1;
            assert_eq!(&m.to_bytes().unwrap(), f.raw());
        }
    }
    accepted
}

/// Frames and parses a whole stream: tagged and startup framing, every
/// parser, until the decoder needs more input or refuses it. Returns how
/// many parses succeeded, so tests can show they reached the parsers.
fn exercise_stream(bytes: &[u8], max: usize) -> usize {
    let mut accepted = 0;
    let mut dec = FrameDecoder::new(max);
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(f)) = dec.decode(&mut buf) {
        accepted += exercise_frame(&f);
    }
    let mut buf = BytesMut::from(bytes);
    if let Ok(Some(f)) = dec.decode_startup(&mut buf)
        && let Ok(p) = StartupPacket::parse(&f)
    {
        accepted += 1;
        assert_eq!(&p.to_bytes().unwrap(), f.raw(), "{p:?}");
    }
    accepted
}

const TAGS: &[u8] = b"QPBDECSHdcfFXpRKZTNGWAV123nsItv";

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let bytes = rng.bytes(len);
        exercise_stream(&bytes, 1 + rng.below(128));
    }
}

#[test]
fn random_bodies_behind_valid_headers_never_panic() {
    // Random bytes rarely form a valid header; this reaches the parsers.
    let mut rng = Rng(42);
    let mut accepted = 0;
    for _ in 0..50_000 {
        let tag = TAGS[rng.below(TAGS.len())];
        let len = rng.below(40);
        // Bias towards bytes that matter to parsers: NUL, 0xff, small ints.
        let body: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => rng.below(4) as u8,
                _ => rng.next() as u8,
            })
            .collect();
        let mut msg = vec![tag];
        msg.extend_from_slice(&((len + 4) as i32).to_be_bytes());
        msg.extend_from_slice(&body);
        accepted += exercise_stream(&msg, 1024);
        let mut startup = ((len + 8) as i32).to_be_bytes().to_vec();
        let code: u32 = match rng.below(4) {
            0 => CANCEL_REQUEST_CODE,
            1 => SSL_REQUEST_CODE,
            2 => 3 << 16,
            _ => rng.next() as u32,
        };
        startup.extend_from_slice(&code.to_be_bytes());
        startup.extend_from_slice(&body);
        accepted += exercise_stream(&startup, 1024);
    }
    eprintln!("random bodies: {accepted} accepted parses");
    assert!(accepted > 5_000, "only {accepted} parses succeeded");
}

/// Valid messages of every kind, for mutation.
fn corpus() -> Vec<Bytes> {
    let params: Vec<(String, String)> = vec![("user".into(), "ci".into())];
    let messages: Vec<Box<dyn Encode>> = vec![
        Box::new(StartupMessage::new(params)),
        Box::new(CancelRequest {
            pid: 1,
            secret_key: Bytes::from_static(b"abcd"),
        }),
        Box::new(Query { sql: "SELECT 1" }),
        Box::new(Parse {
            name: "s",
            sql: "SELECT $1",
            param_types: vec![23, 25],
        }),
        Box::new(Bind {
            portal: "",
            statement: "s",
            param_formats: vec![1],
            params: vec![Some(Bytes::from_static(b"\0\0\0\x01")), None],
            result_formats: vec![0, 1],
        }),
        Box::new(Describe {
            kind: ObjectKind::Portal,
            name: "",
        }),
        Box::new(Execute {
            portal: "",
            max_rows: 10,
        }),
        Box::new(CopyFail { message: "x" }),
        Box::new(SaslInitialResponse {
            mechanism: "SCRAM-SHA-256",
            data: Some(Bytes::from_static(b"n,,n=,r=abc")),
        }),
        Box::new(Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256"],
        }),
        Box::new(Authentication::Md5Password { salt: [1, 2, 3, 4] }),
        Box::new(BackendKeyData {
            pid: 7,
            secret_key: Bytes::from_static(b"wxyz"),
        }),
        Box::new(RowDescription {
            fields: vec![FieldDescription {
                name: "email",
                table_oid: 16384,
                column_attr: 2,
                type_oid: 25,
                type_size: -1,
                type_modifier: -1,
                format: 0,
            }],
        }),
        Box::new(CommandComplete { tag: "SELECT 1" }),
        Box::new(ErrorFields::denied("no").with_hint("ask")),
        Box::new(CopyResponse {
            kind: CopyResponseKind::Out,
            format: 1,
            column_formats: vec![1, 0],
        }),
        Box::new(NotificationResponse {
            pid: 1,
            channel: "c",
            payload: "p",
        }),
        Box::new(ParameterDescription { types: vec![23] }),
        Box::new(NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized: vec!["_pq_.x"],
        }),
        Box::new(FunctionCall {
            function_oid: 1,
            arg_formats: vec![],
            args: vec![None],
            result_format: 0,
        }),
    ];
    let mut out: Vec<Bytes> = messages.iter().map(|m| m.to_bytes().unwrap()).collect();
    out.push(DataRow::build([Some(&b"a"[..]), None, Some(b"bc")]).unwrap());
    out
}

#[test]
fn mutated_valid_messages_never_panic() {
    let corpus = corpus();
    for m in &corpus {
        assert!(exercise_stream(m, 1024) > 0, "corpus entry rejected: {m:?}");
    }
    let mut rng = Rng(7);
    let mut accepted = 0;
    for _ in 0..50_000 {
        let mut m = corpus[rng.below(corpus.len())].to_vec();
        for _ in 0..1 + rng.below(3) {
            match rng.below(4) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
                1 if !m.is_empty() => {
                    m.truncate(rng.below(m.len()));
                }
                2 => {
                    let i = rng.below(m.len() + 1);
                    m.insert(i, rng.next() as u8);
                }
                _ if m.len() > 5 => {
                    // Keep the length field consistent with a changed body,
                    // so the mutation reaches the parser.
                    let i = 5 + rng.below(m.len() - 5);
                    m.remove(i);
                    let len = (m.len() - 1) as i32;
                    m[1..5].copy_from_slice(&len.to_be_bytes());
                }
                _ => {}
            }
        }
        accepted += exercise_stream(&m, 1024);
    }
    eprintln!("mutations: {accepted} accepted parses");
    assert!(accepted > 5_000, "only {accepted} parses succeeded");
}

#[test]
fn concatenated_stream_decodes_in_order() {
    let corpus = corpus();
    // Skip the two startup-phase packets, which are untagged.
    let tagged = &corpus[2..];
    let stream: Vec<u8> = tagged.iter().flat_map(|m| m.to_vec()).collect();
    let mut rng = Rng(99);
    // Feed in random slices, as a socket would.
    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let n = (1 + rng.below(16)).min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f.into_raw());
        }
    }
    assert!(buf.is_empty());
    assert_eq!(got, tagged);
}
