//! SQL statement classification for policy: what each statement of a query string does.
//!
//! [`classify`] parses with PostgreSQL's own parser (pg_query), so comments,
//! casing, quoting and nesting mean exactly what they mean to the server:
//! `/* x */ dElEtE FROM t`, `SELECT 1; DROP TABLE t` and
//! `WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d` are all seen for
//! what they are. Each statement of the string gets a [`Statement`]: a
//! [`StatementClass`], [`Flag`]s, the tables it reads or writes, and a
//! command name for logs. Unparsable text is an error, never a guess.
//! A single read-only SELECT, or a single INSERT, UPDATE or DELETE without
//! WITH, is classified from pg_query's summary alone (`fast.rs`); anything
//! else from the full parse tree.
//! [`ClassifierCache`] memoizes by exact text for all sessions (by shape,
//! integer literals blanked, for plain DML);
//! [`redact_passwords`] masks secrets before SQL reaches a log.
//!
//! ```
//! use chokepoint::protocols::postgres::classify::{classify, Flag, StatementClass};
//!
//! let c = classify("SELECT 1; /* hi */ dElEtE FROM billing.invoices").unwrap();
//! assert_eq!(c.classes().collect::<Vec<_>>(), [StatementClass::Read, StatementClass::Write]);
//! assert_eq!(c.flags().collect::<Vec<_>>(), [Flag::DeleteWithoutWhere]);
//! assert_eq!(c.statements[1].command, "DELETE");
//! assert_eq!(c.statements[1].tables[0].to_string(), "billing.invoices (write)");
//! assert!(classify("DELET FROM t").is_err());
//! ```
//!
//! # Classes
//!
//! | Class | Statements |
//! |---|---|
//! | `read` | SELECT, VALUES, TABLE (incl. `FOR UPDATE/SHARE`, which only lock rows); SHOW; EXPLAIN without ANALYZE (of anything: nothing runs; tables all read, only function flags kept); EXPLAIN ANALYZE of a read; DECLARE CURSOR, FETCH, MOVE; COPY … TO STDOUT or TO 'file'; LOCK … IN ACCESS SHARE MODE |
//! | `write` | INSERT, UPDATE, DELETE, MERGE; SELECT INTO; any read containing a data change (data-modifying CTE, `COPY (DELETE … RETURNING *) TO STDOUT`) or calling a built-in that changes data (large-object writes such as `lo_unlink`, `setval`, `pg_notify`); COPY … FROM STDIN or FROM 'file'; TRUNCATE (+`truncate`); REFRESH MATERIALIZED VIEW; DO and CALL (+`procedural_code`: the body is opaque and may write); NOTIFY (other sessions act on it); LOCK in any stronger mode (PostgreSQL requires write privileges for those too) |
//! | `ddl` | CREATE/ALTER/DROP/COMMENT ON of tables, views, indexes, sequences, types, domains, functions (+`procedural_code`), triggers, rules, schemas, extensions, foreign data wrappers and servers, publications, statistics, casts, operators, text search objects, databases; CREATE TABLE AS, CREATE MATERIALIZED VIEW; ALTER … RENAME / SET SCHEMA / DEPENDS ON |
//! | `dcl` | GRANT, REVOKE (privileges and role membership); CREATE/ALTER/DROP ROLE, USER, GROUP; ALTER DEFAULT PRIVILEGES; ALTER … OWNER TO and ALTER TABLE … OWNER TO; REASSIGN OWNED, DROP OWNED; CREATE/ALTER/DROP POLICY and ALTER TABLE … ROW LEVEL SECURITY; SECURITY LABEL; CREATE/ALTER/DROP USER MAPPING (stores remote credentials); CREATE SCHEMA holding a GRANT |
//! | `admin` | VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, LOAD (loads a shared library), ALTER SYSTEM; CREATE/ALTER/DROP TABLESPACE, ALTER TABLE ALL IN TABLESPACE; CREATE/ALTER/DROP SUBSCRIPTION (connects out to another server); COPY … TO/FROM PROGRAM (+`copy_program`: a shell command on the server, whatever the data does) |
//! | `transaction` | BEGIN, START TRANSACTION, COMMIT/END, ROLLBACK/ABORT, SAVEPOINT, RELEASE, ROLLBACK TO, PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED; SET TRANSACTION, SET SESSION CHARACTERISTICS AS TRANSACTION; SET CONSTRAINTS |
//! | `other` | SET and RESET (SET ROLE, SET SESSION AUTHORIZATION and RESET of either add `set_role`); DISCARD (DISCARD ALL adds `set_role`: it returns to the login role); LISTEN, UNLISTEN; EXECUTE; DEALLOCATE; CLOSE |
//!
//! `PREPARE name AS stmt` takes the class, flags and tables of `stmt`, with
//! command `"PREPARE"` and [`Prepared::Define`]. `EXECUTE name` is `other`
//! with [`Prepared::Execute`] (also `EXPLAIN ANALYZE EXECUTE` and `CREATE
//! TABLE … AS EXECUTE`, which carry the same marker), so a session can
//! apply what each name was prepared as: the PostgreSQL session decides
//! `EXECUTE name` with the stored statement added to it, each time it runs
//! (see its `prepared` module). Protocol-level prepared statements
//! (Parse/Bind) are classified at Parse and decided again at each Bind.
//!
//! # Flags
//!
//! | Flag | Set by |
//! |---|---|
//! | `delete_without_where` / `update_without_where` | a DELETE / UPDATE without WHERE anywhere: top level, CTE, PREPARE, EXPLAIN ANALYZE, COPY query, rule action, `BEGIN ATOMIC` body (`WHERE CURRENT OF` counts as a WHERE; one that names no column, or an OR with such an arm, does not); a MERGE UPDATE / DELETE under an `ON` that names no column, or `WHEN NOT MATCHED BY SOURCE` without a condition |
//! | `drop` | every DROP statement, DROP OWNED, ALTER TABLE … DROP COLUMN (not DROP CONSTRAINT/DEFAULT) |
//! | `truncate` | TRUNCATE |
//! | `data_modifying_cte` | INSERT/UPDATE/DELETE/MERGE inside a WITH |
//! | `procedural_code` | DO, CALL, CREATE FUNCTION/PROCEDURE |
//! | `explain_analyze_write` | EXPLAIN ANALYZE of anything but a read (or of EXECUTE, left to the session) |
//! | `copy_program` / `copy_file` | COPY … PROGRAM / COPY … 'server file' |
//! | `dangerous_function` | a call to a [`DANGEROUS_FUNCTIONS`] entry anywhere, or `set_config` of `role`/`session_authorization` or of a non-constant setting; such an entry or a built-in that writes bound for later calls (CREATE OPERATOR/AGGREGATE/TYPE/CAST/TRIGGER/CONVERSION/TRANSFORM, operator class support functions, FDW handlers); CREATE/ALTER SERVER (a connection out, like dblink) |
//! | `set_role` | SET/RESET ROLE, SET/RESET SESSION AUTHORIZATION, DISCARD ALL, `set_config('role', …)`, and `SET role` clauses inside ALTER ROLE/DATABASE/FUNCTION |
//!
//! # Limits, by design
//!
//! * Classification is syntactic. A user-defined function, operator, view,
//!   trigger or rule can do anything when a "read" runs it; only the
//!   database's own privileges constrain that. Procedural bodies (DO,
//!   functions) are opaque and carry `procedural_code` instead.
//! * Some statements are refused outright ([`ClassifyError::Refused`]):
//!   turning `standard_conforming_strings` off, or switching `client_encoding`
//!   to SJIS/BIG5/GBK/GB18030/UHC/JOHAB, would make the server read later
//!   string literals differently from the classifier. The session also
//!   refuses them at startup (any spelling) and ends when the server's
//!   ParameterStatus reports them (a role's own setting at login, a
//!   function mid-session); statements pipelined behind the one that
//!   changed them are already at the server then.
//! * Very deeply nested text is parsed on a helper thread with a large stack,
//!   and refused beyond a bound ([`ClassifyError::TooDeep`]): libpg_query
//!   recurses without a depth check (see `depth.rs`).
//! * Table names are as written: `schema` is `None` for unqualified names
//!   (resolved by the session's `search_path`, which the classifier cannot
//!   know: the PostgreSQL session reads it from the server at login, see
//!   `search_path.rs`), and a CTE name is not a table.
//!   In DDL, DCL and admin statements every relation named outside a query
//!   counts as written, including a foreign key's referenced table or a
//!   `LIKE` source: the statement changes or depends on them.
//!   `setval('s', …)` writes sequence `s`; with a name that is not a
//!   constant (`setval($1, …)`) it may be any sequence, and writes
//!   [`TableRef::EVERY`] of every schema.
//!   A statement that reaches tables it does not name writes
//!   [`TableRef::EVERY`] of the schema (a schema renamed, dropped, granted
//!   or given away) or of every schema (`TRUNCATE … CASCADE`, a `CASCADE`
//!   from a type, domain, function or other non-relation, `DROP OWNED`,
//!   `REASSIGN OWNED`).
//! * Refused outright too: binding `set_config` to an operator, aggregate or
//!   type, and a DDL or DCL statement naming `pg_settings` (an updatable
//!   view or a rule over it changes settings from later statements that do
//!   not name it).
//! * "Without WHERE" means "may take every row" only as far as the text
//!   shows it: a condition naming no column counts, a tautology over a
//!   column (`WHERE id = id`, `WHERE id IS NOT NULL`) and a subquery that
//!   ignores the row (`WHERE EXISTS (SELECT 1 FROM u WHERE u.a = 1)`) do not.

mod cache;
mod class;
mod depth;
mod error;
mod fast;
mod functions;
mod lex;
mod redact;
mod shape;
mod statement;
mod tree;
mod walk;

#[cfg(test)]
mod tests;

pub use cache::{ClassifierCache, MAX_CACHED_LEN};
pub use class::{
    Access, Classification, Flag, FunctionRef, Prepared, Statement, StatementClass, TableRef,
    UnknownName,
};
pub(crate) use depth::guarded;
pub use error::ClassifyError;
pub(crate) use functions::lexer_setting_refusal;
pub use functions::{DANGEROUS_FUNCTIONS, is_dangerous_function};
pub use redact::redact_passwords;

/// Classifies every statement of `sql`, in order.
///
/// An empty string or one holding only comments gives an empty
/// [`Classification`]. Text PostgreSQL would reject is an error, as are the
/// refusals and depth limit described in the module documentation.
pub fn classify(sql: &str) -> Result<Classification, ClassifyError> {
    depth::guarded(sql, || classify_unguarded(sql))
}

/// [`classify`] without the depth guard: only call it through `depth::guarded`.
fn classify_unguarded(sql: &str) -> Result<Classification, ClassifyError> {
    let summary = pg_query::summary(sql, -1).map_err(|e| ClassifyError::from_pg(sql, e))?;
    if let Some(statement) = fast::plain_statement(sql, &summary) {
        return Ok(Classification {
            statements: vec![statement],
        });
    }
    classify_parsed(sql)
}

/// For the differential fuzz target: an error describing the difference
/// when the summary fast path classifies `sql` and the full parse
/// classifies it otherwise (or fails).
#[doc(hidden)]
pub fn fast_path_disagreement(sql: &str) -> Option<String> {
    let compared = depth::guarded(sql, || {
        let Ok(summary) = pg_query::summary(sql, -1) else {
            return Ok(None);
        };
        let Some(fast) = fast::plain_statement(sql, &summary) else {
            return Ok(None);
        };
        let full = classify_parsed(sql);
        Ok(match full {
            Ok(full) if full.statements.as_slice() == std::slice::from_ref(&fast) => None,
            other => Some(format!("fast path: {fast:?}\nfull parse: {other:?}")),
        })
    });
    compared.ok().flatten()
}

/// The full path: every statement from its complete parse tree.
fn classify_parsed(sql: &str) -> Result<Classification, ClassifyError> {
    let parsed = pg_query::parse(sql).map_err(|e| ClassifyError::from_pg(sql, e))?;
    let statements = parsed
        .protobuf
        .stmts
        .iter()
        .map(
            |raw| match raw.stmt.as_deref().and_then(|s| s.node.as_ref()) {
                Some(node) => statement::classify_statement(node),
                None => Err(ClassifyError::internal(
                    "empty statement in parse tree".to_owned(),
                )),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Classification { statements })
}
