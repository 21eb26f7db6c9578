//! A statement's shape: its text with integer literals blanked, so that
//! statements differing only in those numbers share one cache entry.
//!
//! Why: over the simple protocol, clients inline their values
//! (`UPDATE pgbench_accounts SET abalance = abalance + -2310 WHERE aid =
//! 84237`), so the exact-text cache misses on nearly every statement, and a
//! miss costs a full parse. Within the statements this applies to, an
//! integer literal never changes the classification: it is always a constant
//! node, and no check of a plain SELECT/INSERT/UPDATE/DELETE looks at a
//! number's value.
//!
//! Deliberately narrow, since two texts with one shape must classify alike:
//! * the first keyword is SELECT, INSERT, UPDATE or DELETE, and there is one
//!   statement (no `;` but trailing ones): `SELECT 1; SET
//!   standard_conforming_strings = 0` has no shape;
//! * no `set_config` anywhere (its constant arguments are checked) and no
//!   `U&` escapes (which could spell it);
//! * only a run of digits that stands alone is blanked: not part of an
//!   identifier, a parameter (`$1`), a decimal (`1.5`), an exponent (`1e5`),
//!   a hex/underscore form (`0x1f`, `1_000`), and never inside a literal, a
//!   quoted identifier or a comment (the lexer is `lex.rs`, PostgreSQL's
//!   rules).

use super::lex::{
    contains_ignore_ascii_case, is_ident_cont, is_ident_start, skip_block_comment, skip_dollar,
    skip_line_comment, skip_quoted, skip_string,
};

/// Marks a shape key, so it never equals a statement's own text.
const PREFIX: u8 = 0;

/// The shape key of `sql`, or `None` when it has none or no number to blank.
pub(crate) fn shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    // Runs on every cache lookup: the cheap refusals first, no allocation.
    if !b.iter().any(u8::is_ascii_digit) || !starts_with_dml(b) {
        return None;
    }
    if contains_ignore_ascii_case(b, b"set_config") || contains_ignore_ascii_case(b, b"u&") {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() + 1);
    out.push(PREFIX);
    let mut blanked = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let end = match c {
            b'-' if next == Some(b'-') => skip_line_comment(b, i),
            b'/' if next == Some(b'*') => skip_block_comment(b, i),
            b'\'' => skip_string(b, i, false),
            b'"' => skip_quoted(b, i + 1, b'"'),
            b'$' => skip_dollar(b, i).max(i + 1),
            b';' => {
                if !b[i..].iter().all(|&c| c == b';' || c.is_ascii_whitespace()) {
                    return None;
                }
                b.len()
            }
            c if is_ident_start(c) => {
                let mut j = i;
                while j < b.len() && is_ident_cont(b[j]) {
                    j += 1;
                }
                // E'…' is the one prefix whose literal has backslash escapes.
                if b.get(j) == Some(&b'\'') {
                    skip_string(b, j, j == i + 1 && c.eq_ignore_ascii_case(&b'e'))
                } else {
                    j
                }
            }
            c if c.is_ascii_digit() => {
                let mut j = i;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let after = b.get(j).copied();
                let alone = i.checked_sub(1).is_none_or(|p| b[p] != b'.')
                    && after.is_none_or(|a| a != b'.' && !is_ident_cont(a));
                if alone {
                    out.push(b'0');
                    blanked = true;
                    i = j;
                    continue;
                }
                j
            }
            _ => i + 1,
        };
        let end = end.clamp(i + 1, b.len());
        out.extend_from_slice(&b[i..end]);
        i = end;
    }
    // Bytes were only copied or replaced by ASCII at ASCII boundaries.
    blanked.then(|| String::from_utf8(out).ok()).flatten()
}

/// Whether the first word, after spaces and comments, is a plain DML keyword.
fn starts_with_dml(b: &[u8]) -> bool {
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match (b.get(i), b.get(i + 1)) {
            (Some(b'-'), Some(b'-')) => i = skip_line_comment(b, i),
            (Some(b'/'), Some(b'*')) => i = skip_block_comment(b, i),
            _ => break,
        }
    }
    let start = i;
    while i < b.len() && is_ident_cont(b[i]) {
        i += 1;
    }
    let word = &b[start..i];
    [&b"select"[..], b"insert", b"update", b"delete"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::super::classify;
    use super::*;

    fn key(sql: &str) -> Option<String> {
        shape(sql).map(|k| k[1..].to_owned())
    }

    #[test]
    fn standalone_integers_are_blanked() {
        assert_eq!(
            key("UPDATE pgbench_accounts SET abalance = abalance + -2310 WHERE aid = 84237;")
                .as_deref(),
            Some("UPDATE pgbench_accounts SET abalance = abalance + -0 WHERE aid = 0;")
        );
        assert_eq!(
            key("select * from t1 where c = 5 and d = $1").as_deref(),
            Some("select * from t1 where c = 0 and d = $1")
        );
        assert_eq!(
            key("/* 5 */ SELECT 6 -- 7\n, '8', \"9\", $$10$$, E'\\'11'").as_deref(),
            Some("/* 5 */ SELECT 0 -- 7\n, '8', \"9\", $$10$$, E'\\'11'")
        );
    }

    #[test]
    fn anything_else_has_no_shape() {
        for sql in [
            // Not one plain DML statement.
            "SET standard_conforming_strings = 0",
            "SELECT 1; SET standard_conforming_strings = 0",
            "SELECT 1;SET client_encoding = 6",
            "WITH d AS (DELETE FROM t WHERE id = 1) SELECT 1",
            "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
            "COPY t TO '/tmp/1'",
            "PREPARE p AS SELECT 1",
            // Constant arguments that matter, or a way to spell them.
            "SELECT set_config('statement_timeout', '1', false)",
            "SELECT SET_CONFIG('role', 'x', 1::bool)",
            "SELECT U&\"set\\005fconfig\"('role', 'x', false), 1",
            // Numbers that are not standalone integers: nothing to blank.
            "SELECT 1.5, .5, 1e5, 0x1f, 1_000, $1, t1",
            "SELECT 'no numbers outside literals 1'",
        ] {
            assert_eq!(key(sql), None, "{sql}");
        }
    }

    #[test]
    fn texts_with_one_shape_classify_alike() {
        let pairs = [
            (
                "DELETE FROM t WHERE id = 1",
                "DELETE FROM t WHERE id = 99999999999999999999",
            ),
            (
                "UPDATE billing.invoices SET n = 1 WHERE k = 2",
                "UPDATE billing.invoices SET n = 3 WHERE k = 4",
            ),
            (
                "SELECT pg_terminate_backend(1)",
                "SELECT pg_terminate_backend(2)",
            ),
            (
                "SELECT lo_export(1, '/tmp/x')",
                "SELECT lo_export(2, '/tmp/x')",
            ),
            (
                "INSERT INTO t VALUES (1, 'a') RETURNING 1",
                "INSERT INTO t VALUES (2, 'a') RETURNING 3",
            ),
            (
                "SELECT * FROM t LIMIT 1 OFFSET 2",
                "SELECT * FROM t LIMIT 3 OFFSET 4",
            ),
        ];
        for (a, b) in pairs {
            assert_eq!(shape(a), shape(b), "{a} / {b}");
            assert!(shape(a).is_some(), "{a}");
            assert_eq!(classify(a).unwrap(), classify(b).unwrap(), "{a} / {b}");
        }
    }
}
