//! Why a query string could not be classified; every such string is to be refused.

/// A query string the classifier refuses to vouch for. The session denies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// PostgreSQL's parser rejects the text (the server would too), or the
    /// parse tree could not be read.
    #[error("unparsable SQL: {message}{}", .cursor.map(|c| format!(" (position {c})")).unwrap_or_default())]
    Unparsable {
        /// PostgreSQL's message, e.g. `syntax error at or near "DELET"`.
        message: String,
        /// 1-based character position of the error, as PostgreSQL reports it, when known.
        cursor: Option<usize>,
    },
    /// The statement would make the server read later SQL differently from
    /// the classifier (string escapes, client encoding), so nothing after it
    /// could be trusted.
    #[error("refused SQL: {reason}")]
    Refused {
        /// What the statement would change.
        reason: &'static str,
    },
    /// The text nests so deeply that parsing it could exhaust the stack
    /// (PostgreSQL's parser library recurses without a depth check).
    #[error("SQL nests too deeply to classify (estimated depth {estimate}, limit {limit})")]
    TooDeep {
        /// The estimate of `depth.rs`.
        estimate: usize,
        /// The largest estimate accepted.
        limit: usize,
    },
}

impl ClassifyError {
    /// A failure of the classifier itself (an unexpected tree shape); refused like bad SQL.
    pub(crate) fn internal(message: String) -> Self {
        ClassifyError::Unparsable {
            message,
            cursor: None,
        }
    }

    /// Converts a pg_query error about `sql`, locating the error when the message allows.
    pub(crate) fn from_pg(sql: &str, err: pg_query::Error) -> Self {
        match err {
            pg_query::Error::Parse(message)
            | pg_query::Error::Scan(message)
            | pg_query::Error::Split(message) => {
                let cursor = locate(sql, &message);
                ClassifyError::Unparsable { message, cursor }
            }
            pg_query::Error::Conversion(nul) => ClassifyError::Unparsable {
                message: "query string contains a NUL byte".to_owned(),
                cursor: Some(char_position(sql, nul.nul_position())),
            },
            pg_query::Error::Decode(e) if e.to_string().contains("recursion limit") => {
                ClassifyError::Unparsable {
                    // prost refuses trees deeper than 100 messages unless built with
                    // its `no-recursion-limit` feature.
                    message: "statement nests too deeply for the parse tree decoder".to_owned(),
                    cursor: None,
                }
            }
            other => ClassifyError::internal(other.to_string()),
        }
    }
}

/// How many earlier occurrences of the offending token are tried (one
/// re-parse each) before giving up on a position.
const MAX_CANDIDATES: usize = 8;

/// PostgreSQL computes an error position, but pg_query's Rust API passes on
/// only the message. Recover it: `at end of input` is the end; `at or near
/// "X"` is the token X at which a prefix of the text fails with the same
/// message (the parser stops at the first token that cannot continue a valid
/// prefix, so earlier X tokens parse or fail differently).
fn locate(sql: &str, message: &str) -> Option<usize> {
    if message.ends_with("at end of input") {
        return Some(sql.chars().count() + 1);
    }
    let (_, near) = message.split_once("at or near \"")?;
    let near = near.strip_suffix('"')?;
    if near.is_empty() {
        return None;
    }
    let candidates: Vec<usize> = match pg_query::scan(sql) {
        Ok(scan) => scan
            .tokens
            .iter()
            .filter_map(|t| {
                let (start, end) = (usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?);
                (sql.get(start..end) == Some(near)).then_some(start)
            })
            .take(MAX_CANDIDATES + 1)
            .collect(),
        // The scanner fails on the same lexical errors (an unterminated
        // literal): those run to the end of the text, so match the tail.
        Err(_) => sql
            .len()
            .checked_sub(near.len())
            .filter(|&i| sql.get(i..) == Some(near))
            .into_iter()
            .collect(),
    };
    let offset = match candidates.as_slice() {
        [] => return None,
        [only] => *only,
        many => many.iter().take(MAX_CANDIDATES).copied().find(|&i| {
            let prefix = &sql[..i + near.len()];
            matches!(pg_query::summary(prefix, -1), Err(pg_query::Error::Parse(m)) if m == message)
        })?,
    };
    Some(char_position(sql, offset))
}

/// 1-based character position of byte `offset`.
fn char_position(sql: &str, offset: usize) -> usize {
    sql.get(..offset).map_or(offset, |s| s.chars().count()) + 1
}
