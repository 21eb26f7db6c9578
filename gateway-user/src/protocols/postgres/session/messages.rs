//! Messages the gateway writes itself: denials, fatal errors, and the
//! statements it sends upstream in a denied one's place.
use super::*;

/// A complete message with `tag`; for the few the gateway writes itself.
pub(super) fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

pub(super) fn class_names(classification: Option<&Classification>) -> String {
    let Some(c) = classification else {
        return String::new();
    };
    let mut names: Vec<String> = c.statements.iter().map(|s| s.class.to_string()).collect();
    names.dedup();
    names.join(",")
}

/// ErrorResponse for a denial: SQLSTATE 42501, the rule in the message,
/// the statement in the detail.
pub(super) fn deny_error(rule: &str, message: &str, statement: &str) -> Bytes {
    let message = format!("chokepoint: {message}");
    let detail = format!("statement: {statement}");
    let hint =
        format!("rule: {rule}; ask the owners of the chokepoint policy if this job needs it");
    let fields = ErrorFields {
        severity: codec::Severity::Error,
        code: codec::SQLSTATE_INSUFFICIENT_PRIVILEGE,
        message: &message,
        detail: (!statement.is_empty()).then_some(detail.as_str()),
        hint: Some(&hint),
    };
    // Fails only on a malformed SQLSTATE, and this one is a constant.
    fields.to_bytes().unwrap_or_default()
}

/// ErrorResponse for a message past one of the session's limits
/// (SQLSTATE 54000, program_limit_exceeded); the session goes on.
pub(super) fn limit_error(message: &str) -> Bytes {
    let message = format!("chokepoint: {message}");
    let fields = ErrorFields {
        severity: codec::Severity::Error,
        code: "54000",
        message: &message,
        detail: None,
        hint: None,
    };
    // Fails only on a malformed SQLSTATE, and this one is a constant.
    fields.to_bytes().unwrap_or_default()
}

/// A FATAL ErrorResponse that ends the session.
pub(super) fn fatal(code: &str, message: &str) -> Bytes {
    ErrorFields {
        severity: codec::Severity::Fatal,
        code,
        message,
        detail: None,
        hint: None,
    }
    .to_bytes()
    .unwrap_or_default()
}

pub(super) fn push_query(out: &mut BytesMut, sql: &str) {
    // Cannot fail: the text has no NUL (it is built from a hex nonce).
    let _ = postgres_protocol::message::frontend::query(sql, out);
}

pub(super) fn push_parse(out: &mut BytesMut, name: &str, sql: &str) {
    let _ = postgres_protocol::message::frontend::parse(name, sql, std::iter::empty(), out);
}

/// A Bind of `portal` to `statement` with no parameters; `results`: the
/// result format codes (none: all text; one: for every column).
pub(super) fn push_bind(out: &mut BytesMut, portal: &str, statement: &str, results: &[i16]) {
    let _ = postgres_protocol::message::frontend::bind(
        portal,
        statement,
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<&[u8]>>(),
        |_: Option<&[u8]>,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::Yes)
        },
        results.iter().copied(),
        out,
    );
}

/// An Execute of `portal` (all rows).
pub(super) fn push_execute(out: &mut BytesMut, portal: &str) {
    let _ = postgres_protocol::message::frontend::execute(portal, 0, out);
}

pub(super) fn push_describe_portal(out: &mut BytesMut, portal: &str) {
    let _ = postgres_protocol::message::frontend::describe(b'P', portal, out);
}

pub(super) fn push_close_statement(out: &mut BytesMut, statement: &str) {
    let _ = postgres_protocol::message::frontend::close(b'S', statement, out);
}

pub(super) fn push_close_portal(out: &mut BytesMut, portal: &str) {
    let _ = postgres_protocol::message::frontend::close(b'P', portal, out);
}

pub(super) fn push_flush(out: &mut BytesMut) {
    postgres_protocol::message::frontend::flush(out);
}

pub(super) fn push_sync(out: &mut BytesMut) {
    postgres_protocol::message::frontend::sync(out);
}
