//! Primitive field readers and writers shared by every message file.
use bytes::{BufMut, Bytes, BytesMut};

use super::CodecError;

/// Cursor over a message body. Every read is bounds-checked and returns
/// [`CodecError::Truncated`] when the body is too short, so parsers can be
/// written as straight-line code without indexing.
pub(crate) struct Reader<'a> {
    /// The body, kept to hand out zero-copy [`Bytes`] slices.
    owner: &'a Bytes,
    /// What is left to read.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(body: &'a Bytes) -> Self {
        Self {
            owner: body,
            rest: body.as_ref(),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.rest.len() {
            return Err(CodecError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, CodecError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A 16-bit count whose items each take at least `min_item` bytes.
    /// Unsigned: PostgreSQL reads every Int16 count with
    /// `pq_getmsgint(msg, 2)`, which is unsigned, so up to 65535 items are
    /// valid (libpq does the same); reading counts as `i16` would make the
    /// gateway see a different message than the peer.
    /// Checking against the remaining body before the caller allocates keeps
    /// a forged count from reserving memory the message cannot fill.
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize, CodecError> {
        let n = usize::from(self.u16()?);
        if n.saturating_mul(min_item) > self.rest.len() {
            return Err(CodecError::Truncated);
        }
        Ok(n)
    }

    /// Everything left, as a zero-copy slice.
    pub(crate) fn rest_shared(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.rest);
        self.owner.slice_ref(rest)
    }

    /// A NUL-terminated string as raw bytes (without the NUL).
    pub(crate) fn cbytes(&mut self) -> Result<&'a [u8], CodecError> {
        let Some(nul) = memchr::memchr(0, self.rest) else {
            return Err(CodecError::Malformed {
                what: "string without NUL terminator",
            });
        };
        let s = &self.rest[..nul];
        self.rest = &self.rest[nul + 1..];
        Ok(s)
    }

    /// A NUL-terminated string that must be UTF-8.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.cbytes()?).map_err(|_| CodecError::Malformed {
            what: "string is not valid UTF-8",
        })
    }

    /// An Int32 length followed by that many bytes; -1 means NULL and any
    /// other negative length is malformed (PostgreSQL and libpq agree).
    pub(crate) fn nullable_value(&mut self) -> Result<Option<&'a [u8]>, CodecError> {
        match self.i32()? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| CodecError::Malformed {
                    what: "negative value length other than -1",
                })?;
                self.bytes(len).map(Some)
            }
        }
    }

    /// [`Reader::nullable_value`] as a zero-copy slice.
    pub(crate) fn nullable_shared(&mut self) -> Result<Option<Bytes>, CodecError> {
        Ok(self.nullable_value()?.map(|v| self.owner.slice_ref(v)))
    }

    /// A format code: 0 (text) or 1 (binary). PostgreSQL rejects anything
    /// else, and the gateway must know which one applies to mask values.
    pub(crate) fn format(&mut self) -> Result<i16, CodecError> {
        match self.i16()? {
            f @ (0 | 1) => Ok(f),
            _ => Err(CodecError::Malformed {
                what: "format code is neither 0 (text) nor 1 (binary)",
            }),
        }
    }

    /// Ends parsing: leftover bytes mean the message is not what its fields
    /// describe, and forwarding it could let the peer read something the
    /// gateway did not.
    pub(crate) fn finish(self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Malformed {
                what: "trailing bytes after the last field",
            })
        }
    }
}

/// Writes one message: the tag (none for startup-phase packets), an Int32
/// length covering itself and the body, then what `body` writes. On any
/// error `dst` is truncated back so no partial message is left behind.
pub(crate) fn write_message(
    dst: &mut BytesMut,
    tag: Option<u8>,
    body: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let start = dst.len();
    let result = (|| {
        if let Some(tag) = tag {
            dst.put_u8(tag);
        }
        let len_at = dst.len();
        dst.put_i32(0);
        body(dst)?;
        let len = dst.len() - len_at;
        let len_field = i32::try_from(len).map_err(|_| CodecError::TooLarge {
            len,
            max: i32::MAX as usize,
        })?;
        dst[len_at..len_at + 4].copy_from_slice(&len_field.to_be_bytes());
        Ok(())
    })();
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// Writes a NUL-terminated string. An embedded NUL would end the string
/// early for the reader and shift every following field, so it is refused.
pub(crate) fn put_cstr(dst: &mut BytesMut, s: &[u8]) -> Result<(), CodecError> {
    if memchr::memchr(0, s).is_some() {
        return Err(CodecError::Malformed {
            what: "string to encode contains NUL",
        });
    }
    dst.put_slice(s);
    dst.put_u8(0);
    Ok(())
}

/// Writes a 16-bit count, refusing more items than the field can carry.
pub(crate) fn put_count(dst: &mut BytesMut, n: usize) -> Result<(), CodecError> {
    let n = u16::try_from(n).map_err(|_| CodecError::Malformed {
        what: "more than 65535 items for a 16-bit count",
    })?;
    dst.put_u16(n);
    Ok(())
}

/// Writes an Int32 length and the value, or -1 for NULL.
pub(crate) fn put_nullable_value(dst: &mut BytesMut, v: Option<&[u8]>) -> Result<(), CodecError> {
    match v {
        None => dst.put_i32(-1),
        Some(v) => {
            let len = i32::try_from(v.len()).map_err(|_| CodecError::TooLarge {
                len: v.len(),
                max: i32::MAX as usize,
            })?;
            dst.put_i32(len);
            dst.put_slice(v);
        }
    }
    Ok(())
}

/// Defines a message whose body is empty: a unit struct with its tag,
/// a strict `parse` and [`Encode`](super::Encode). Used from sibling
/// modules, so `super::` names the codec module.
macro_rules! empty_message {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            /// The message's tag byte.
            pub const TAG: u8 = $tag;

            /// Parses the (empty) body.
            pub fn parse(body: &::bytes::Bytes) -> Result<Self, super::CodecError> {
                super::wire::Reader::new(body).finish()?;
                Ok(Self)
            }
        }

        impl super::Encode for $name {
            fn encode_into(
                &self,
                dst: &mut ::bytes::BytesMut,
            ) -> Result<(), super::CodecError> {
                super::wire::write_message(dst, Some(Self::TAG), |_| Ok(()))
            }
        }
    };
}
pub(crate) use empty_message;
