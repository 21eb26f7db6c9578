//! The fast path: a plain SELECT, INSERT, UPDATE or DELETE classified from pg_query's summary, without building the parse tree.
//!
//! `pg_query::parse` hands the tree over as protobuf, and libpg_query's
//! protobuf encoder is most of the cost of a full classification (~30 µs
//! for a pgbench UPDATE, two thirds of it in `protobuf_c_message_pack`);
//! `pg_query::summary` walks the tree in C and returns only table, function
//! and statement-type lists (~2–3 µs). That is enough for the most common
//! statements: one SELECT that only reads, and one INSERT, UPDATE or DELETE
//! with no WITH. The one thing the summary cannot say, whether an UPDATE or
//! DELETE has a WHERE clause, is read from the text (`top_level_where`),
//! which is safe only because the summary has already proved the text is a
//! single such statement. Every other statement takes the full path. The
//! unit tests check that both paths agree on every statement they share.

use pg_query::SummaryResult;
use pg_query::protobuf::summary_result::Context;

use super::class::{Access, Flag, FunctionRef, Statement, StatementClass, TableRef};
use super::functions::{is_settings_view, needs_inspection};
use super::lex::{
    is_ident_cont, is_ident_start, skip_between_tokens, skip_dollar, skip_quoted, skip_string,
};
use super::statement::{normalize_functions, normalize_tables};

/// The data change a plain statement makes, if any.
#[derive(Clone, Copy, PartialEq)]
enum Change {
    Insert,
    Update,
    Delete,
}

/// The classification of `sql` when it is a single plain SELECT, INSERT,
/// UPDATE or DELETE the summary fully describes; `None` sends it to the full parse.
pub(crate) fn plain_statement(sql: &str, summary: &SummaryResult) -> Option<Statement> {
    // The summary merges all statements of a string; without a `;` other
    // than trailing ones there is at most one. (A `;` in a literal or comment
    // only costs the full parse.)
    if sql
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
        .contains(';')
    {
        return None;
    }
    // SELECTs at any nesting, and at most one data change. The grammar allows
    // a nested INSERT/UPDATE/DELETE only in a WITH (refused below) or under
    // EXPLAIN, PREPARE, COPY… (statement types of their own), so with no
    // other type the change is the statement itself.
    let mut change = None;
    for kind in &summary.statement_types {
        let this = match kind.as_str() {
            "SelectStmt" => continue,
            "InsertStmt" => Change::Insert,
            "UpdateStmt" => Change::Update,
            "DeleteStmt" => Change::Delete,
            _ => return None,
        };
        if change.replace(this).is_some() {
            return None;
        }
    }
    if summary.statement_types.is_empty() {
        return None;
    }
    // `WHERE CURRENT OF c` names a cursor (a portal), and `ON CONFLICT …
    // DO UPDATE` reads its target, which only the walk reports; keywords
    // cannot be spelled with escapes.
    let says = |word: &[u8]| {
        sql.as_bytes()
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    };
    if matches!(change, Some(Change::Update | Change::Delete)) && says(b"current")
        || change == Some(Change::Insert) && says(b"conflict") && says(b"update")
    {
        return None;
    }
    // The summary drops every table whose bare name equals some CTE's name,
    // even schema-qualified or out of the CTE's scope; the walk scopes CTEs
    // properly (and flags data-modifying ones).
    if !summary.cte_names.is_empty() {
        return None;
    }
    if summary
        .functions
        .iter()
        .any(|f| needs_inspection(&f.function_name))
    {
        return None;
    }
    if !has_no_qualifying_dot(sql) {
        return None;
    }
    let mut tables = Vec::with_capacity(summary.tables.len());
    let mut written = false;
    for t in &summary.tables {
        let access = match t.context {
            Context::Select => Access::Read,
            // UPDATE pg_settings runs set_config (the walk notes it).
            Context::Dml if is_settings_view(schema_of(t), &t.table_name) => return None,
            // Only the change's own target is in DML context.
            Context::Dml if change.is_some() => {
                written = true;
                Access::Write
            }
            // SELECT INTO reports its new table in DDL context.
            _ => return None,
        };
        tables.push(TableRef {
            schema: (!t.schema_name.is_empty()).then(|| t.schema_name.clone()),
            name: t.table_name.clone(),
            access,
        });
    }
    let (class, command, flags) = match change {
        None => (StatementClass::Read, "SELECT", Vec::new()),
        Some(_) if !written => return None,
        Some(Change::Insert) => (StatementClass::Write, "INSERT", Vec::new()),
        Some(Change::Update) => (
            StatementClass::Write,
            "UPDATE",
            without_where(sql, Flag::UpdateWithoutWhere)?,
        ),
        Some(Change::Delete) => (
            StatementClass::Write,
            "DELETE",
            without_where(sql, Flag::DeleteWithoutWhere)?,
        ),
    };
    Some(Statement {
        class,
        flags,
        tables: normalize_tables(tables),
        functions: normalize_functions(
            summary
                .functions
                .iter()
                .map(|f| FunctionRef {
                    schema: f.schema_name.clone().filter(|s| !s.is_empty()),
                    name: f.function_name.clone(),
                    attribute: false,
                })
                .collect(),
        ),
        command,
        prepared: None,
        sets_search_path: false,
        current_of: Vec::new(),
        computed_setting: false,
    })
}

fn schema_of(t: &pg_query::Table) -> Option<&str> {
    (!t.schema_name.is_empty()).then_some(t.schema_name.as_str())
}

/// Whether the text, outside literals, quoted names and comments, has no
/// dot but a number's (`1.5`, `.5`). A dot elsewhere qualifies a table, a
/// function or a column, or calls a function in attribute notation
/// (`i.purge`, `(i).purge`, `$1.purge` call `purge(i)`), which the summary
/// does not report and only the walk sees. Which one it is the text alone
/// cannot tell (found in review: matching `x.purge` against the summary's
/// tables let `SELECT x.purge FROM billing.invoices x, x.purge` through),
/// so every such statement takes the full parse.
fn has_no_qualifying_dot(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = skip_between_tokens(b, i) {
            i = end;
            continue;
        }
        if b[i] == b'.' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return false;
        }
        i = token(b, i).1;
    }
    true
}

/// `[flag]` when the statement has no WHERE clause, nothing when it has one,
/// `None` when the text cannot tell.
fn without_where(sql: &str, flag: Flag) -> Option<Vec<Flag>> {
    Some(if top_level_where(sql)? {
        Vec::new()
    } else {
        vec![flag]
    })
}

/// Whether a single UPDATE or DELETE without WITH (the summary's verdict)
/// has a WHERE clause; `None` when the text is not plain enough to tell.
///
/// In those two statements the keyword WHERE outside parentheses can only
/// start the statement's own WHERE clause (`WHERE CURRENT OF` included):
/// every subquery, FILTER and function argument list is parenthesized. The
/// exceptions are where PostgreSQL accepts a reserved word as a label: after
/// a `.` (`u.where`, a column) and after AS in the RETURNING list, which
/// comes after the WHERE clause; the scan gives up on the first and stops
/// at RETURNING. Comments, literals and quoted names are skipped with
/// PostgreSQL's own lexing rules (`lex.rs`).
///
/// A statement that joins other relations (`DELETE … USING`, `UPDATE …
/// FROM`, seen as a USING or a FROM past a DELETE's own outside
/// parentheses) goes to the full parse: its WHERE may name only their
/// columns, and only the tree tells whose a column is.
fn top_level_where(sql: &str) -> Option<bool> {
    let b = sql.as_bytes();
    let mut depth = 0usize;
    let mut after_dot = false;
    let mut i = 0;
    let mut first = true;
    // A DELETE's own FROM is the one FROM it may have.
    let mut froms_left = 0usize;
    while i < b.len() {
        // Whitespace and comments leave `after_dot` as it is: `u. /**/ where`.
        if let Some(end) = skip_between_tokens(b, i) {
            i = end;
            continue;
        }
        let c = b[i];
        let dot = c == b'.';
        i = match c {
            b'(' => {
                depth += 1;
                i + 1
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i + 1
            }
            _ => match token(b, i) {
                (Some(word), j) => {
                    if std::mem::take(&mut first) && word.eq_ignore_ascii_case(b"delete") {
                        froms_left = 1;
                    }
                    if depth == 0 && word.eq_ignore_ascii_case(b"using") {
                        return None;
                    }
                    if depth == 0 && word.eq_ignore_ascii_case(b"from") {
                        froms_left = froms_left.checked_sub(1)?;
                    }
                    if depth == 0 && word.eq_ignore_ascii_case(b"where") {
                        return (!after_dot && plainly_filters(b, j)).then_some(true);
                    }
                    if depth == 0 && word.eq_ignore_ascii_case(b"returning") {
                        return (!after_dot).then_some(false);
                    }
                    j
                }
                (None, j) => j,
            },
        };
        after_dot = dot;
    }
    Some(false)
}

/// The token at `i` (not whitespace or a comment): its text if it is an
/// unquoted word, and where it ends. Literals (`'…'`, `E'…'` with
/// backslash escapes, `B'…'`, `X'…'`, `N'…'`, `$tag$…$tag$`) and quoted
/// names are skipped whole; any other byte is a token of its own.
fn token(b: &[u8], i: usize) -> (Option<&[u8]>, usize) {
    let end = match b[i] {
        b'\'' => skip_string(b, i, false),
        b'"' => skip_quoted(b, i + 1, b'"'),
        b'$' => skip_dollar(b, i).max(i + 1),
        c if is_ident_start(c) => {
            let mut j = i;
            while j < b.len() && is_ident_cont(b[j]) {
                j += 1;
            }
            let prefix = j == i + 1 && matches!(c.to_ascii_lowercase(), b'b' | b'e' | b'n' | b'x');
            if prefix && b.get(j) == Some(&b'\'') {
                skip_string(b, j, c.eq_ignore_ascii_case(&b'e'))
            } else {
                return (Some(&b[i..j]), j);
            }
        }
        _ => i + 1,
    };
    (None, end)
}

/// Words that may start a WHERE clause without being a column: constants,
/// SQL value functions, NOT, CURRENT OF, and type names of typed literals
/// (`timestamp with time zone '…'`). Listing too many only sends a
/// statement to the full parse.
const NOT_A_COLUMN: &[&[u8]] = &[
    b"array",
    b"bit",
    b"case",
    b"cast",
    b"char",
    b"character",
    // `COLLATION FOR (…)`: a keyword followed by a word, not by `(` (found
    // in review: taken for a column, `WHERE collation for ('x') IS NOT
    // NULL` passed as filtering).
    b"collation",
    b"current",
    b"current_catalog",
    b"current_date",
    b"current_role",
    b"current_schema",
    b"current_time",
    b"current_timestamp",
    b"current_user",
    b"double",
    b"false",
    b"interval",
    b"localtime",
    b"localtimestamp",
    b"national",
    b"nchar",
    b"not",
    b"null",
    b"row",
    b"session_user",
    b"system_user",
    b"time",
    b"timestamp",
    b"true",
    b"user",
    b"varchar",
];

/// Words that may follow a column at the start of a WHERE clause
/// (`a IS NULL`, `a NOT IN (…)`, `a COLLATE "C" = …`, `a AT TIME ZONE …`).
const AFTER_A_COLUMN: &[&[u8]] = &[
    b"and",
    b"at",
    b"between",
    b"collate",
    b"ilike",
    b"in",
    b"is",
    b"isnull",
    b"like",
    b"not",
    b"notnull",
    b"operator",
    b"or",
    b"returning",
    b"similar",
];

/// Whether the WHERE clause starting at `start` certainly filters by a
/// column, in the sense of `walk::filters_rows`: it starts with a column
/// name (not a keyword, a function call or a typed literal), so the first
/// conjunct names a column, and it has no OR anywhere, so no arm of it can
/// take every row. Anything else (`WHERE true`, `WHERE 1 = 1`, `WHERE $1`,
/// `WHERE id = 1 OR true`, `WHERE CURRENT OF c`) goes to the full parse,
/// which decides exactly.
fn plainly_filters(b: &[u8], start: usize) -> bool {
    let next_token = |mut i: usize| {
        while i < b.len() {
            match skip_between_tokens(b, i) {
                Some(end) => i = end,
                None => break,
            }
        }
        i
    };
    let first = next_token(start);
    if first >= b.len() {
        return false;
    }
    let mut after = match token(b, first) {
        (None, end) if b[first] == b'"' => end,
        (Some(word), end) if !NOT_A_COLUMN.iter().any(|k| word.eq_ignore_ascii_case(k)) => end,
        _ => return false,
    };
    // A qualified name (`t.id`, `s."T".c`, and a qualified type name).
    let mut next = next_token(after);
    while b.get(next) == Some(&b'.') {
        let part = next_token(next + 1);
        if part >= b.len() {
            return false;
        }
        after = match token(b, part) {
            (None, end) if b[part] == b'"' => end,
            (Some(_), end) => end,
            _ => return false,
        };
        next = next_token(after);
    }
    // A name before `(` calls a function; before a string of any
    // spelling ('…', $$…$$, E'…', B'…', X'…', N'…', U&'…') it types a
    // literal (`set $q$x$q$` is a constant of type `set`).
    match b.get(next) {
        Some(b'(' | b'\'' | b'$') => return false,
        Some(&c) if is_ident_start(c) => match token(b, next) {
            (None, _) => return false,
            (Some(word), end) if word.eq_ignore_ascii_case(b"u") && b.get(end) == Some(&b'&') => {
                return false;
            }
            // A column is followed by an operator or one of these words;
            // any other word means the first one was a keyword after all
            // (as `collation` in `COLLATION FOR`), for the full parse.
            (Some(word), _) if !AFTER_A_COLUMN.iter().any(|k| word.eq_ignore_ascii_case(k)) => {
                return false;
            }
            _ => {}
        },
        _ => {}
    }
    let mut i = after;
    while i < b.len() {
        if let Some(end) = skip_between_tokens(b, i) {
            i = end;
            continue;
        }
        i = match token(b, i) {
            (Some(word), _) if word.eq_ignore_ascii_case(b"or") => return false,
            (_, j) => j,
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::top_level_where;

    #[test]
    fn top_level_where_reads_only_the_statements_own_clause() {
        for (sql, expected) in [
            ("UPDATE t SET a = 1 WHERE id = 2", Some(true)),
            ("delete from t where current of c", None),
            // A WHERE that may take every row is for the full parse to judge.
            ("DELETE FROM t WHERE true", None),
            ("DELETE FROM t WHERE 1 = 1", None),
            ("DELETE FROM t WHERE $1", None),
            ("DELETE FROM t WHERE id = 1 OR true", None),
            ("DELETE FROM t WHERE id = 1 AND (a = 2 oR b = 3)", None),
            ("DELETE FROM t WHERE current_user = 'ci'", None),
            ("DELETE FROM t WHERE lower('A') = 'a'", None),
            ("DELETE FROM t WHERE \"lower\"('A') = 'a'", None),
            ("DELETE FROM t WHERE int4 '1' = 1", None),
            // Found by the fuzzer: a type name before a dollar-quoted string.
            ("DELETE FROM t WHERE SET  $q$ WHE'E $q$", None),
            ("DELETE FROM t WHERE INSERTS.ET  $q$ WHE'E $q$", None),
            ("DELETE FROM t WHERE s . \"T\" . c = 1", Some(true)),
            ("DELETE FROM t WHERE int4 E'1' = 1", None),
            ("DELETE FROM t WHERE text U&'x' = 'x'", None),
            ("DELETE FROM t WHERE \"varchar\" 'x' = 'x'", None),
            ("DELETE FROM t WHERE a IS NULL", Some(true)),
            (
                "DELETE FROM t WHERE timestamp with time zone 'now' < now()",
                None,
            ),
            ("DELETE FROM t WHERE NOT false", None),
            ("DELETE FROM t WHERE id = 'a\\' OR true", None),
            ("DELETE FROM t WHERE id = E'\\' or '", Some(true)),
            (
                "DELETE FROM t WHERE id = 'or' AND \"or\" = 1 -- or",
                Some(true),
            ),
            ("DELETE FROM t WHERE \"id\" = $1", Some(true)),
            ("DELETE FROM t WHERE t.id IN (1, 2)", Some(true)),
            ("UPDATE t SET a = 1", Some(false)),
            ("DELETE FROM t", Some(false)),
            (
                "UPDATE t SET a = (SELECT b FROM u WHERE u.id = 1)",
                Some(false),
            ),
            ("UPDATE t SET a = 1 -- WHERE id = 2", Some(false)),
            (
                "UPDATE t SET a = 1 /* WHERE /* nested */ id = 2 */",
                Some(false),
            ),
            ("UPDATE t SET a = ' WHERE ' ", Some(false)),
            ("UPDATE t SET a = E'\\' WHERE '", Some(false)),
            ("UPDATE t SET \"where\" = 1", Some(false)),
            ("UPDATE t SET a = $x$ WHERE $x$", Some(false)),
            ("UPDATE t SET a = 1 RETURNING a AS where", Some(false)),
            (
                "UPDATE t SET a = 1 WHERE b RETURNING a AS where",
                Some(true),
            ),
            ("UPDATE t SET a = u.where FROM u", None),
            ("UPDATE t SET a = u. /* x */ WHERE FROM u", None),
            // PostgreSQL's whitespace includes the vertical tab.
            ("UPDATE t SET a = u.\x0bwhere FROM u", None),
            ("UPDATE t SET a = 1\x0bWHERE\x0cb", Some(true)),
            ("UPDATE t SET a = somewhere", Some(false)),
            // Joined relations: whose column the WHERE names is for the
            // full parse.
            ("DELETE FROM t USING u WHERE t.id = u.id", None),
            ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", None),
            ("UPDATE t SET a = b IS DISTINCT FROM c WHERE id = 1", None),
            ("DELETE FROM t WHERE id IN (SELECT id FROM u)", Some(true)),
            (
                "UPDATE t SET a = (SELECT b FROM u) WHERE id = 1",
                Some(true),
            ),
            // Found in review: a keyword followed by a word.
            ("DELETE FROM t WHERE collation for ('x') IS NOT NULL", None),
            ("DELETE FROM t WHERE a b", None),
            ("DELETE FROM t WHERE a NOT IN (1)", Some(true)),
            ("DELETE FROM t WHERE a COLLATE \"C\" = 'x'", Some(true)),
            ("UPDATE t SET a = count(*) FILTER (WHERE true)", Some(false)),
            ("UPDATE t SET a = 1 WHERE'x' = b", None),
            ("UPDATE t SET a = 1 WHERE/**/b", Some(true)),
            ("UPDATE t SET a = e'\\'' WHERE b", Some(true)),
        ] {
            assert_eq!(top_level_where(sql), expected, "{sql:?}");
        }
    }
}
