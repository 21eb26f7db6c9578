//! What building masking rules from configuration can fail with.

/// A masking rule, strategy, detector or key that cannot be used.
///
/// Every variant names the offending configuration text so the policy loader
/// can attach it to a file:line:col without re-explaining it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskingError {
    /// A column spec is not `schema.table.column` or `table.column`.
    #[error(
        "column spec `{spec}` has {parts} part(s); expected `schema.table.column` or `table.column` (globs allowed in each part)"
    )]
    SpecParts { spec: String, parts: usize },

    /// One part of a column spec is empty, e.g. `public..email`.
    #[error("column spec `{spec}`: the {part} part is empty")]
    EmptySpecPart { spec: String, part: &'static str },

    /// A glob (in a column spec part or a column-name pattern) does not parse.
    #[error("`{spec}`: invalid glob `{pattern}` at character {pos}: {msg}")]
    BadGlob {
        spec: String,
        pattern: String,
        pos: usize,
        msg: &'static str,
    },

    /// A strategy name other than `redact`, `partial` or `hash`.
    #[error("unknown masking strategy `{0}`; expected `redact`, `partial` or `hash`")]
    UnknownStrategy(String),

    /// `keep = N` given to a strategy other than `partial`.
    #[error("`keep` only applies to the `partial` strategy, not `{0}`")]
    KeepNotAllowed(String),

    /// A detector name that is not one of the built-in detectors.
    #[error(
        "unknown detector `{0}`; expected one of `email`, `card_number`, `us_ssn`, `jwt`, `api_token`"
    )]
    UnknownDetector(String),

    /// A policy uses the `hash` strategy with a key too short to resist an
    /// offline guess of the key itself.
    #[error(
        "the masking hash key is {len} byte(s); the `hash` strategy needs at least {min} so hashed values cannot be reversed by guessing the key"
    )]
    WeakHashKey { len: usize, min: usize },
}
