//! Masks secrets in SQL text before it is logged or recorded.

use std::borrow::Cow;
use std::ops::Range;

use pg_query::protobuf::Token;

use super::lex::{
    contains_ignore_ascii_case, is_ident_cont, is_ident_start, skip_between_tokens, skip_dollar,
    skip_quoted, skip_string,
};

/// What replaces a masked literal.
const MASK: &str = "'***'";

/// `sql` with secret literals replaced by `'***'`, for logs and recordings.
///
/// Masked: the literal right after the keyword `PASSWORD` (`CREATE|ALTER ROLE|USER
/// … [ENCRYPTED] PASSWORD '…'`, and `OPTIONS (password '…')` of user mappings
/// and servers), the one after `CONNECTION` (`CREATE SUBSCRIPTION … CONNECTION
/// 'host=… password=…'`), and any literal that looks like a connection string
/// carrying a password (`'… password=…'`, `'postgres://user:secret@…'`), as
/// passed to `dblink_connect`.
///
/// Tokens come from PostgreSQL's own scanner, so comments, quoting and
/// casing cannot hide a secret from it. If the scanner rejects the text (an
/// unterminated literal), a careful byte scan with the same rules masks the
/// literal after `PASSWORD`/`CONNECTION`, to the end of the text if it never closes.
/// Returns the text unchanged (borrowed) when nothing needed masking.
///
/// ```
/// use chokepoint::protocols::postgres::classify::redact_passwords;
///
/// assert_eq!(
///     redact_passwords("ALTER USER ci WITH ENCRYPTED PASSWORD 'hunter2'"),
///     "ALTER USER ci WITH ENCRYPTED PASSWORD '***'"
/// );
/// ```
pub fn redact_passwords(sql: &str) -> Cow<'_, str> {
    // Runs for every statement logged or recorded; scanning costs ~10 µs.
    if !may_hold_secrets(sql) {
        return Cow::Borrowed(sql);
    }
    let ranges = match pg_query::scan(sql) {
        Ok(scan) => scanned_secrets(sql, &scan.tokens),
        Err(_) => lexed_secrets(sql),
    };
    if ranges.is_empty() {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for range in ranges {
        // Ranges are sorted and disjoint; the guards keep slicing safe anyway.
        if range.start < at
            || range.end > sql.len()
            || !sql.is_char_boundary(range.start)
            || !sql.is_char_boundary(range.end)
        {
            continue;
        }
        out.push_str(&sql[at..range.start]);
        out.push_str(MASK);
        at = range.end;
    }
    out.push_str(&sql[at..]);
    Cow::Owned(out)
}

/// False only when nothing below could match: both keywords are plain
/// ASCII words in the text (PostgreSQL folds only ASCII case and has no
/// escapes for keywords), and [`looks_like_credentials`] needs
/// `password` or `://` verbatim in the literal.
fn may_hold_secrets(sql: &str) -> bool {
    [&b"password"[..], b"connection", b"://"]
        .iter()
        .any(|n| contains_ignore_ascii_case(sql.as_bytes(), n))
}

/// Byte ranges of secret literals among PostgreSQL's tokens.
fn scanned_secrets(sql: &str, tokens: &[pg_query::protobuf::ScanToken]) -> Vec<Range<usize>> {
    let is_comment = |t: &pg_query::protobuf::ScanToken| {
        t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32
    };
    let is_literal = |t: &pg_query::protobuf::ScanToken| {
        t.token == Token::Sconst as i32 || t.token == Token::Usconst as i32
    };
    let mut ranges = Vec::new();
    let mut previous: Option<i32> = None;
    for token in tokens.iter().filter(|t| !is_comment(t)) {
        let range =
            usize::try_from(token.start).unwrap_or(0)..usize::try_from(token.end).unwrap_or(0);
        if is_literal(token) {
            let after_keyword = matches!(previous, Some(p) if p == Token::Password as i32 || p == Token::Connection as i32);
            if after_keyword || sql.get(range.clone()).is_some_and(looks_like_credentials) {
                ranges.push(range);
            }
        }
        previous = Some(token.token);
    }
    ranges
}

/// The fallback when PostgreSQL's scanner fails: literal ranges found by `lex.rs`.
fn lexed_secrets(sql: &str) -> Vec<Range<usize>> {
    let b = sql.as_bytes();
    let mut ranges = Vec::new();
    let mut after_keyword = false;
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = skip_between_tokens(b, i) {
            i = end;
            continue;
        }
        let c = b[i];
        let next = b.get(i + 1).copied();
        let literal_end = match c {
            b'\'' => Some(skip_string(b, i, false)),
            // `$tag$…$tag$`; a lone `$` (not a delimiter) comes back as one byte.
            b'$' if next.is_some_and(|n| n == b'$' || is_ident_start(n)) => {
                Some(skip_dollar(b, i)).filter(|&end| end > i + 1)
            }
            b'"' => {
                i = skip_quoted(b, i + 1, b'"');
                after_keyword = false;
                continue;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &b[start..i];
                // E'…', U&'…', N'…', B'…', X'…': the prefix belongs to the literal.
                let prefixed = match b.get(i) {
                    Some(b'\'') if word.len() == 1 => {
                        Some((start, skip_string(b, i, word.eq_ignore_ascii_case(b"e"))))
                    }
                    Some(b'&')
                        if word.eq_ignore_ascii_case(b"u") && b.get(i + 1) == Some(&b'\'') =>
                    {
                        Some((start, skip_string(b, i + 1, false)))
                    }
                    _ => None,
                };
                if let Some((start, end)) = prefixed {
                    push_literal(sql, &mut ranges, start..end, after_keyword);
                    after_keyword = false;
                    i = end;
                } else {
                    after_keyword = word.eq_ignore_ascii_case(b"password")
                        || word.eq_ignore_ascii_case(b"connection");
                }
                continue;
            }
            _ => None,
        };
        match literal_end {
            Some(end) => {
                push_literal(sql, &mut ranges, i..end, after_keyword);
                i = end;
            }
            None => i += 1,
        }
        after_keyword = false;
    }
    ranges
}

fn push_literal(
    sql: &str,
    ranges: &mut Vec<Range<usize>>,
    range: Range<usize>,
    after_keyword: bool,
) {
    if after_keyword || sql.get(range.clone()).is_some_and(looks_like_credentials) {
        ranges.push(range);
    }
}

/// A literal holding a libpq connection string with a password
/// (`password=…`) or a URI with user info (`scheme://user:secret@host`).
fn looks_like_credentials(literal: &str) -> bool {
    let lower = literal.to_ascii_lowercase();
    let keyword = lower
        .match_indices("password")
        .any(|(i, m)| lower[i + m.len()..].trim_start().starts_with('='));
    let uri = lower.split_once("://").is_some_and(|(_, rest)| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    });
    keyword || uri
}
