//! Masking rules: by source column (`schema.table.column` globs), by output column name, by detector.
use std::{fmt, sync::Arc};

use glob::{MatchOptions, Pattern};

use super::{detectors::Detector, error::MaskingError, strategy::Strategy};

/// How every masking glob matches. Case-insensitive (ASCII) because rule
/// authors write `Customers.Email` while the catalog stores folded
/// `customers.email`; the error this invites is over-masking a quoted
/// mixed-case twin, which is the safe direction. `*` crosses every character:
/// identifiers have no path separators.
pub(crate) const MATCH: MatchOptions = MatchOptions {
    case_sensitive: false,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

/// Masks a column that comes straight from a matching table column, whatever
/// the query calls it (`SELECT email AS x FROM customers` still matches
/// `public.customers.email`).
#[derive(Clone)]
pub struct ColumnRule {
    pub schema: Pattern,
    pub table: Pattern,
    pub column: Pattern,
    pub strategy: Strategy,
    /// Rule name, for logs and recordings.
    pub name: Arc<str>,
}

impl ColumnRule {
    /// Builds a rule from `schema.table.column` or `table.column` (schema
    /// `public`, PostgreSQL's default), with globs allowed in every part:
    /// `public.customers.email`, `*.*.ssn`, `billing.*.*`, `users.pass[wp]*`.
    ///
    /// Parts are split on dots outside `[...]` classes and trimmed; names are
    /// written as the catalog stores them, without SQL quotes; a literal `*`,
    /// `?` or `[` in a name is written `[*]`, `[?]`, `[[]`.
    ///
    /// ```
    /// use chokepoint::masking::{ColumnRule, Strategy};
    ///
    /// let rule = ColumnRule::parse("customers.email", Strategy::Redact, "pii-email")?;
    /// assert!(rule.matches("public", "customers", "email"));
    /// assert!(!rule.matches("billing", "customers", "email"));
    /// # Ok::<(), chokepoint::masking::MaskingError>(())
    /// ```
    pub fn parse(
        spec: &str,
        strategy: Strategy,
        name: impl Into<Arc<str>>,
    ) -> Result<ColumnRule, MaskingError> {
        let parts: Vec<&str> = split_spec(spec).into_iter().map(str::trim).collect();
        let (schema, table, column) = match parts.as_slice() {
            [table, column] => ("public", *table, *column),
            [schema, table, column] => (*schema, *table, *column),
            _ => {
                return Err(MaskingError::SpecParts {
                    spec: spec.to_owned(),
                    parts: parts.len(),
                });
            }
        };
        let glob = |part: &str, which: &'static str| {
            if part.is_empty() {
                return Err(MaskingError::EmptySpecPart {
                    spec: spec.to_owned(),
                    part: which,
                });
            }
            compile_glob(spec, part)
        };
        Ok(ColumnRule {
            schema: glob(schema, "schema")?,
            table: glob(table, "table")?,
            column: glob(column, "column")?,
            strategy,
            name: name.into(),
        })
    }

    /// Whether the rule covers the table column `schema.table.column`.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.schema.matches_with(schema, MATCH)
            && self.table.matches_with(table, MATCH)
            && self.column.matches_with(column, MATCH)
    }
}

impl fmt::Debug for ColumnRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnRule")
            .field(
                "spec",
                &format_args!("{}.{}.{}", self.schema, self.table, self.column),
            )
            .field("strategy", &self.strategy)
            .field("name", &self.name)
            .finish()
    }
}

/// Masks a column by the name the query gives it (`RowDescription` field
/// name), case-insensitively: catches computed columns and aliases such as
/// `SELECT lower(email) AS email`.
#[derive(Clone)]
pub struct NameRule {
    pub pattern: Pattern,
    pub strategy: Strategy,
    /// Rule name, for logs and recordings.
    pub name: Arc<str>,
}

impl NameRule {
    /// Builds a rule from a glob over output column names, e.g. `*password*`.
    pub fn parse(
        pattern: &str,
        strategy: Strategy,
        name: impl Into<Arc<str>>,
    ) -> Result<NameRule, MaskingError> {
        Ok(NameRule {
            pattern: compile_glob(pattern, pattern)?,
            strategy,
            name: name.into(),
        })
    }

    /// Whether the rule covers an output column called `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.matches_with(name, MATCH)
    }
}

impl fmt::Debug for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameRule")
            .field("pattern", &self.pattern.as_str())
            .field("strategy", &self.strategy)
            .field("name", &self.name)
            .finish()
    }
}

/// Masks only the substrings a content detector finds, in columns the plan scans.
#[derive(Debug, Clone)]
pub struct DetectorRule {
    pub detector: Detector,
    pub strategy: Strategy,
    /// Rule name, for logs and recordings.
    pub name: Arc<str>,
}

fn compile_glob(spec: &str, pattern: &str) -> Result<Pattern, MaskingError> {
    Pattern::new(pattern).map_err(|e| MaskingError::BadGlob {
        spec: spec.to_owned(),
        pattern: pattern.to_owned(),
        pos: e.pos,
        msg: e.msg,
    })
}

/// Splits a column spec on the dots that are not inside a `[...]` class, so
/// `[.]` can name a literal dot. An unclosed `[` swallows the rest of the spec
/// into one part, whose glob then fails with its own precise error.
fn split_spec(spec: &str) -> Vec<&str> {
    let bytes = spec.as_bytes();
    let mut parts = Vec::with_capacity(3);
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'.' => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            b'[' => {
                // In glob syntax `]` right after `[` or `[!` is a literal member.
                let mut j = i + 1;
                if bytes.get(j) == Some(&b'!') {
                    j += 1;
                }
                if bytes.get(j) == Some(&b']') {
                    j += 1;
                }
                match bytes[j.min(bytes.len())..].iter().position(|&b| b == b']') {
                    Some(close) => i = j + close,
                    None => break,
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&spec[start..]);
    parts
}
