//! Result masking: sensitive columns and detected secrets are rewritten inline before rows reach the job.
//!
//! At each RowDescription the session describes the columns
//! ([`ColumnInfo`]: resolved source `schema.table.column`, output name, type
//! OID, format) and asks the [`MaskingPolicy`] for a [`ResultPlan`]. For each
//! column, in this order:
//!
//! 1. the first [`ColumnRule`] whose `schema.table.column` globs match the
//!    column's source masks it (aliases do not escape: the source is resolved
//!    from the table OID and attribute number); a whole-row reference
//!    (`SELECT c FROM customers c`, attribute 0) is masked, as NULL, by the
//!    first rule covering any of its table's columns (the session finds it
//!    with [`MaskingPolicy::column_rule`] and applies [`ResultPlan::mask_column`]);
//! 2. else the first [`NameRule`] matching its output name (case-insensitive)
//!    masks it;
//! 3. else, if the policy has detectors, the column is scanned when it is
//!    computed (no source) or its type is text-like;
//! 4. else it is kept.
//!
//! A plan whose columns are all kept [is a no-op](ResultPlan::is_noop): the
//! session forwards DataRows without looking at them. Otherwise
//! [`ResultPlan::apply`] returns `None` for a row it leaves unchanged (the
//! original bytes are forwarded, no copy) or the row's new values.
//!
//! # What a masked value becomes
//!
//! NULL always stays NULL. "Text" below is the value's text; strategies
//! ([`Strategy`]): **redact** → `***`; **partial** (keep *n*) → `*` for every
//! character but the last *n* (all `*` when the value has *n* or fewer);
//! **hash** → `hash:` + 16 hex chars of HMAC-SHA256(`hash_key`, value).
//!
//! | column type and format | whole-column mask (column / name rule) | scan: detector hit |
//! |---|---|---|
//! | text, varchar, name, `"char"`, unknown — text format | strategy applied to the text | only the matched substrings are replaced |
//! | bpchar — text format | strategy applied to the text without its trailing padding | substrings replaced |
//! | text, varchar, bpchar, name — binary format (the binary form is the UTF-8 text) | as in text format | substrings replaced |
//! | json, jsonb — text format | the masked text as a JSON string (`"***"`), so the document stays valid JSON | substrings replaced, widened to whole escape sequences; `"` and `\` in kept characters become `*` |
//! | json — binary (the text); jsonb — binary (version byte 1 + text) | NULL (type-valid binary masking is not attempted) | substrings replaced after the version byte; a jsonb version other than 1 → NULL |
//! | arrays of text, varchar, bpchar, name, `"char"` — text format | NULL | substrings replaced inside the array literal |
//! | arrays of json, jsonb — text format | NULL | the whole value → NULL (two escaping layers: not rewritten in place) |
//! | bool, int2, int4, oid, float4, date, time(tz), timestamp(tz), interval, uuid — text format | NULL | never scanned: their text cannot hold a detector match |
//! | bytea, bytea[] — text format (hex `\x…` or escape) | NULL | the bytes each `\x` run spells, and the text itself, are scanned: a hit → NULL (`convert_to(email, 'UTF8')` is the email one `decode` away) |
//! | any other type — text format (int8, numeric, float8, user-defined…) | NULL (no type-valid masked value exists in general) | the whole value → NULL (`***` is not a valid number or enum label) |
//! | int8, numeric — binary format | NULL | decoded to their decimal text and scanned: a hit → NULL, as in text format |
//! | bytea, arrays, records, user-defined types — binary format | NULL | NULL whenever a scan is due: they can hold text the detectors cannot read in place |
//! | any other type — binary format | NULL (type-valid binary masking is not attempted) | never scanned |
//!
//! "Text-like" for step 3 (table columns without a rule): the text, json,
//! bytea and array rows above, plus user-defined types (OID ≥ 16384: citext,
//! enums…) in text format, whose text may hold anything. Computed columns
//! are scanned unless their values are "never scanned" above. So a card
//! number cast to `bigint` in a query still comes back NULL.
//!
//! Rules match case-insensitively (ASCII). Values are expected in UTF-8 (the
//! session should pin `client_encoding` to UTF8): partial masking counts
//! UTF-8 characters and masks a non-UTF-8 value entirely; detectors match
//! ASCII patterns only and do not see through JSON escapes (`\u0040`).
//! Table columns of other built-in types without a rule are kept: an int8
//! or numeric column is not scanned, so a card number copied into one
//! (`SELECT card::bigint INTO t`) comes back as it is; detectors cannot
//! follow a value through every transformation a query can apply (see the
//! README's masking limits).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use chokepoint::masking::{
//!     ColumnInfo, ColumnRule, Detector, DetectorRule, MaskingPolicy, Strategy,
//! };
//!
//! let policy = MaskingPolicy {
//!     columns: vec![ColumnRule::parse("customers.card", Strategy::Partial { keep_last: 4 }, "pan")?],
//!     detectors: vec![DetectorRule {
//!         detector: Detector::Email,
//!         strategy: Strategy::Redact,
//!         name: "emails".into(),
//!     }],
//!     hash_key: Arc::from(&b"0123456789abcdef0123456789abcdef"[..]),
//!     ..MaskingPolicy::default()
//! };
//! let plan = policy.plan(&[
//!     ColumnInfo { source: Some(("public", "customers", "card")), ancestors: &[], output_name: "c", type_oid: 25, format: 0 },
//!     ColumnInfo { source: None, ancestors: &[], output_name: "note", type_oid: 25, format: 0 },
//! ]);
//! let row = plan.apply(&[Some(b"4111111111111111"), Some(b"mail a@b.com")]).unwrap();
//! assert_eq!(row[0].as_deref(), Some(&b"************1111"[..]));
//! assert_eq!(row[1].as_deref(), Some(&b"mail ***"[..]));
//! # Ok::<(), chokepoint::masking::MaskingError>(())
//! ```
mod detectors;
mod error;
mod plan;
mod rules;
mod strategy;
#[cfg(test)]
mod tests;

pub use detectors::{
    Detector, find_api_tokens, find_card_numbers, find_emails, find_jwts, find_us_ssns,
};
pub use error::MaskingError;
pub use plan::{
    ColumnAction, ColumnInfo, MaskedRow, MaskingPolicy, Reading, ResultPlan, WITHHELD_RULE, oid,
};
pub use rules::{ColumnRule, DetectorRule, NameRule};
pub use strategy::{
    DEFAULT_KEEP_LAST, HASH_HEX_CHARS, HASH_PREFIX, MIN_HASH_KEY_LEN, REDACTED, Strategy,
};
