//! PostgreSQL wire protocol (v3.0–3.2): framing, typed zero-copy messages and builders.
//!
//! Layout follows the protocol's own message families, one file each;
//! framing ([`FrameDecoder`], [`read_frame`]) is kept apart from the message
//! types so the session can forward a message's original bytes
//! ([`Frame::raw`]) after deciding on its parsed view.
//!
//! * Framing: [`Frame`] / [`StartupFrame`] hold one whole message as a single
//!   [`Bytes`] slice of the read buffer; nothing is copied per message.
//! * Parsing: every message type has `parse(body)` borrowing from the frame
//!   body (`&str` for text, which must be UTF-8, and [`Bytes`] slices for
//!   payloads). [`FrontendMessage::parse`] and [`BackendMessage::parse`]
//!   dispatch on the tag. Parsing is strict: a field running past the end,
//!   a missing NUL, invalid UTF-8, an out-of-range length or count, or bytes
//!   left over after the last field is an error, so what the gateway decides
//!   on is exactly what the peer will read. Every accepted message
//!   re-encodes to the identical bytes ([`Encode`]).
//! * Building: every message type implements [`Encode`]; builders refuse
//!   input that cannot be represented (a NUL inside a string, more than
//!   65535 items, a message over `i32::MAX` bytes) instead of truncating.
//!
//! Nothing here panics on any input; malformed input is a [`CodecError`],
//! which the session turns into a denial.
//!
//! Text fields are validated as UTF-8, so the session must pin
//! `client_encoding` to `UTF8`; a peer using another encoding is refused
//! (fail closed) rather than misread.
//!
//! ```
//! # use bytes::BytesMut;
//! # use chokepoint::protocols::postgres::codec::*;
//! let mut buf = BytesMut::new();
//! Query { sql: "SELECT 1" }.encode_into(&mut buf).unwrap();
//! let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
//! match FrontendMessage::parse(&frame).unwrap() {
//!     FrontendMessage::Query(q) => assert_eq!(q.sql, "SELECT 1"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
use bytes::{Bytes, BytesMut};

mod wire;

mod frame;

// Frontend (client → server).
mod copy;
mod extended;
mod frontend;
mod function_call;
mod password;
mod query;
mod startup;
mod terminate;

// Backend (server → client).
mod authentication;
mod backend;
mod backend_key_data;
mod command_complete;
mod completions;
mod copy_response;
mod data_row;
mod error_response;
mod negotiate_protocol_version;
mod notification;
mod parameter_description;
mod parameter_status;
mod ready_for_query;
mod row_description;

#[cfg(test)]
mod tests;

pub use authentication::Authentication;
pub use backend::BackendMessage;
pub use backend_key_data::BackendKeyData;
pub use command_complete::CommandComplete;
pub use completions::{
    BindComplete, CloseComplete, EmptyQueryResponse, NoData, ParseComplete, PortalSuspended,
};
pub use copy::{CopyData, CopyDone, CopyFail};
pub use copy_response::{CopyResponse, CopyResponseKind};
pub use data_row::{ColumnEdit, Columns, DataRow};
pub use error_response::{
    ErrorFields, ErrorResponse, NoticeResponse, SQLSTATE_INSUFFICIENT_PRIVILEGE, Severity,
};
pub use extended::{Bind, Close, Describe, Execute, Flush, ObjectKind, Parse, Sync};
pub use frame::{
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_STARTUP_SIZE, Frame, FrameDecoder, StartupFrame,
    pending_len, read_frame, read_startup_frame,
};
pub use frontend::FrontendMessage;
pub use function_call::{FunctionCall, FunctionCallResponse};
pub use negotiate_protocol_version::NegotiateProtocolVersion;
pub use notification::NotificationResponse;
pub use parameter_description::ParameterDescription;
pub use parameter_status::ParameterStatus;
pub use password::{PASSWORD_TAG, PasswordMessage, SaslInitialResponse, SaslResponse};
pub use query::Query;
pub use ready_for_query::{ReadyForQuery, TransactionStatus};
pub use row_description::{FieldDescription, RowDescription};
pub use startup::{
    CANCEL_REQUEST_CODE, CancelRequest, GSSENC_REQUEST_CODE, MAX_CANCEL_KEY_LEN,
    MIN_CANCEL_KEY_LEN, SSL_REQUEST_CODE, StartupMessage, StartupPacket,
};
pub use terminate::Terminate;

/// Why bytes could not be framed, parsed or built.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The stream ended inside a message, or a field runs past the end of
    /// its message.
    #[error("message truncated")]
    Truncated,
    /// The length field announces more than the configured bound (or a built
    /// message would exceed what the length field can express).
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced (or built) length.
        len: usize,
        /// The bound it exceeds.
        max: usize,
    },
    /// The length field is smaller than the smallest valid message.
    #[error("invalid message length")]
    BadLength,
    /// A tag this direction of the protocol does not define.
    #[error("unknown message tag {:?}", char::from(*.0))]
    UnknownTag(u8),
    /// The body does not follow the message's format.
    #[error("malformed message: {what}")]
    Malformed {
        /// What is wrong, for logs and the denial reason.
        what: &'static str,
    },
    /// Reading from the peer failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A message that can be written to the wire with its tag and length.
pub trait Encode {
    /// Appends the complete message to `dst`. On error `dst` is left as it
    /// was, so a half-written message can never be sent.
    fn encode_into(&self, dst: &mut BytesMut) -> Result<(), CodecError>;

    /// The complete message as one buffer.
    fn to_bytes(&self) -> Result<Bytes, CodecError> {
        let mut dst = BytesMut::new();
        self.encode_into(&mut dst)?;
        Ok(dst.freeze())
    }
}
