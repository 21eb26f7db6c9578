//! Unit tests: the COPY found and restated, its options checked as the
//! server checks them, and rows spelled as the server spells them.
use super::{
    encode::Encoder,
    options::{CopyFormat, CsvOptions, ForceQuote, TextOptions},
    *,
};

fn copy(sql: &str) -> CopyOut {
    masked_copy(sql).unwrap().expect("a COPY TO STDOUT")
}

fn refused(sql: &str) -> String {
    masked_copy(sql).expect_err(sql)
}

#[test]
fn a_copys_query_runs_as_the_job_wrote_it() {
    let c = copy(
        "/* (note */ COPY -- )\n ( SELECT ')', \"a)\" FROM t /* ) */ WHERE (x) = 1 ) TO STDOUT (FORMAT csv, HEADER)",
    );
    assert_eq!(c.query, " SELECT ')', \"a)\" FROM t /* ) */ WHERE (x) = 1 ");
    assert_eq!(c.table, None);
    assert_eq!(copy("COPY ((SELECT 1)) TO STDOUT").query, "(SELECT 1)");
    assert_eq!(
        copy("COPY (VALUES (1), (2)) TO STDOUT;").query,
        "VALUES (1), (2)"
    );
}

#[test]
fn a_table_is_read_by_a_select_of_only_that_table() {
    let c = copy("COPY public.t (a, \"B\") TO STDOUT");
    assert_eq!(c.query, "SELECT \"a\", \"B\" FROM ONLY \"public\".\"t\"");
    assert_eq!(
        c.table,
        Some(TableCopy {
            name: "t".into(),
            schema: Some("public".into()),
            columns_listed: true
        })
    );
    let c = copy("COPY \"we\"\"ird\" TO STDOUT WITH CSV DELIMITER ';'");
    assert_eq!(c.query, "SELECT * FROM ONLY \"we\"\"ird\"");
    assert!(!c.table.unwrap().columns_listed);
    assert_eq!(
        c.format,
        CopyFormat::Csv(CsvOptions {
            delimiter: b';',
            null: Vec::new(),
            header: false,
            quote: b'"',
            escape: b'"',
            force_quote: ForceQuote::None,
        })
    );
}

#[test]
fn other_copies_are_not_this_ones() {
    for sql in [
        "COPY t FROM STDIN",
        "COPY t TO '/tmp/x'",
        "COPY t TO PROGRAM 'cat'",
        "SELECT 1",
    ] {
        assert_eq!(masked_copy(sql), Ok(None), "{sql}");
    }
}

#[test]
fn what_cannot_run_in_its_place_is_refused_with_the_reason() {
    assert_eq!(
        refused("SELECT 1; COPY t TO STDOUT"),
        "it is not the only statement of its query string"
    );
    assert_eq!(
        refused("COPY t TO STDOUT; SELECT 1"),
        "it is not the only statement of its query string"
    );
    for dml in [
        "COPY (INSERT INTO t VALUES (1)) TO STDOUT",
        "copy (delete from t where id = 1 returning *) to stdout",
        "COPY (UPDATE t SET a = 1 RETURNING a) TO STDOUT",
    ] {
        assert_eq!(
            refused(dml),
            "a data-modifying COPY query is not run under masking: run the statement with RETURNING instead",
            "{dml}"
        );
    }
    assert_eq!(
        refused("COPY t (a, b, a) TO STDOUT"),
        "column \"a\" specified more than once"
    );
    assert_eq!(
        refused("COPY (SELECT 1 INTO x) TO STDOUT"),
        "COPY (SELECT INTO) is not supported"
    );
}

#[test]
fn options_are_checked_as_the_server_checks_them() {
    for (sql, why) in [
        (
            "COPY t TO STDOUT (FORMAT binary, HEADER)",
            "cannot specify HEADER in BINARY mode",
        ),
        (
            "COPY t TO STDOUT (FORMAT binary, NULL 'x')",
            "cannot specify NULL in BINARY mode",
        ),
        (
            "COPY t TO STDOUT (DELIMITER '||')",
            "COPY delimiter must be a single one-byte character",
        ),
        (
            "COPY t TO STDOUT (DELIMITER 'a')",
            "COPY delimiter cannot be \"a\"",
        ),
        (
            "COPY t TO STDOUT (DELIMITER E'\\n')",
            "COPY delimiter cannot be newline or carriage return",
        ),
        (
            "COPY t TO STDOUT (QUOTE '''')",
            "COPY quote available only in CSV mode",
        ),
        (
            "COPY t TO STDOUT (FORMAT csv, DELIMITER '\"')",
            "COPY delimiter and quote must be different",
        ),
        (
            "COPY t TO STDOUT (NULL 'a,b', FORMAT csv)",
            "COPY delimiter must not appear in the NULL specification",
        ),
        (
            "COPY t TO STDOUT (FORMAT csv, NULL '\"')",
            "CSV quote character must not appear in the NULL specification",
        ),
        (
            "COPY t TO STDOUT (FORMAT csv, FORCE_NOT_NULL (a))",
            "COPY FORCE_NOT_NULL cannot be used with COPY TO",
        ),
        (
            "COPY t TO STDOUT (FORCE_QUOTE *)",
            "COPY force quote available only in CSV mode",
        ),
        (
            "COPY t TO STDOUT (FORMAT xml)",
            "COPY format \"xml\" not recognized",
        ),
        (
            "COPY t TO STDOUT (FORMAT csv, FORMAT text)",
            "conflicting or redundant options",
        ),
        (
            "COPY t TO STDOUT (ENCODING 'LATIN1')",
            "COPY option ENCODING other than the session's UTF8 is not supported with masking",
        ),
        ("COPY t TO STDOUT (OIDS)", "option \"oids\" not recognized"),
        (
            "COPY t TO STDOUT (FORMAT csv, HEADER match)",
            "cannot use \"match\" with HEADER in COPY TO",
        ),
    ] {
        assert_eq!(refused(sql), why, "{sql}");
    }
    assert_eq!(
        copy("COPY t TO STDOUT (FORMAT binary)").format,
        CopyFormat::Binary
    );
    assert!(masked_copy("COPY t TO STDOUT (ENCODING 'utf-8')").is_ok());
    assert!(masked_copy("COPY t TO STDOUT (FREEZE false, HEADER 1, FORMAT csv)").is_ok());
    assert!(masked_copy("COPY t TO STDOUT (HEADER 'ON')").is_ok());
    let CopyFormat::Csv(o) =
        copy("COPY t TO STDOUT (FORMAT csv, FORCE_QUOTE (a, \"B\"), HEADER false)").format
    else {
        panic!()
    };
    assert_eq!(
        o.force_quote,
        ForceQuote::Columns(vec!["a".into(), "B".into()])
    );
    assert!(!o.header);
    let CopyFormat::Csv(o) = copy("COPY t TO STDOUT WITH CSV FORCE QUOTE *").format else {
        panic!()
    };
    assert_eq!(o.force_quote, ForceQuote::All);
}

fn text(header: bool) -> CopyFormat {
    CopyFormat::Text(TextOptions {
        delimiter: b'\t',
        null: b"\\N".to_vec(),
        header,
    })
}

fn csv(force_quote: ForceQuote) -> CopyFormat {
    CopyFormat::Csv(CsvOptions {
        delimiter: b',',
        null: Vec::new(),
        header: true,
        quote: b'"',
        escape: b'"',
        force_quote,
    })
}

fn spelled(encoder: &mut Encoder, rows: &[&[Option<&str>]]) -> Vec<String> {
    rows.iter()
        .map(|row| {
            let values: Vec<Option<&[u8]>> = row.iter().map(|v| v.map(str::as_bytes)).collect();
            String::from_utf8(encoder.row(&values)).unwrap()
        })
        .collect()
}

#[test]
fn text_rows_are_escaped_as_the_server_escapes_them() {
    let mut e = Encoder::new(text(true), &["id", "a\tb", "gen"], vec![0, 1]).unwrap();
    assert_eq!(e.response(), [0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(e.header(&["id", "a\tb", "gen"]).unwrap(), b"id\ta\\tb\n");
    let rows = spelled(
        &mut e,
        &[
            &[
                Some("1"),
                Some("tab\there\\ back\nnew\r\u{8}\u{c}\u{b}\u{1}"),
                Some("x"),
            ],
            &[Some(""), None, None],
        ],
    );
    assert_eq!(
        rows,
        ["1\ttab\\there\\\\ back\\nnew\\r\\b\\f\\v\u{1}\n", "\t\\N\n"]
    );
    assert_eq!(e.finish(), None);
    let e = Encoder::new(text(false), &["id"], vec![0]).unwrap();
    assert_eq!(e.header(&["id"]), None);
}

#[test]
fn csv_fields_are_quoted_only_where_the_server_quotes_them() {
    let names = ["id", "note"];
    let mut e = Encoder::new(csv(ForceQuote::None), &names, vec![0, 1]).unwrap();
    assert_eq!(e.header(&names).unwrap(), b"id,note\n");
    let rows = spelled(
        &mut e,
        &[
            &[Some("1"), Some("plain")],
            &[Some("2"), Some("a,b \"q\"")],
            &[Some("3"), Some("")],
            &[Some("4"), None],
            &[Some("5"), Some("multi\nline")],
            &[Some("6"), Some("\\.")],
        ],
    );
    assert_eq!(
        rows,
        [
            "1,plain\n",
            "2,\"a,b \"\"q\"\"\"\n",
            // An empty string is spelled apart from NULL (empty by default).
            "3,\"\"\n",
            "4,\n",
            "5,\"multi\nline\"\n",
            // Not alone on its line: no end-of-data marker to avoid.
            "6,\\.\n",
        ]
    );
    let mut single = Encoder::new(csv(ForceQuote::None), &["v"], vec![0]).unwrap();
    assert_eq!(spelled(&mut single, &[&[Some("\\.")]]), ["\"\\.\"\n"]);
    let mut forced = Encoder::new(
        csv(ForceQuote::Columns(vec!["note".into()])),
        &names,
        vec![0, 1],
    )
    .unwrap();
    assert_eq!(
        spelled(&mut forced, &[&[Some("1"), Some("x")], &[Some("2"), None]]),
        ["1,\"x\"\n", "2,\n"]
    );
    // A repeated name: the first column of it, as the server maps names.
    let twice = ["x", "x"];
    let mut first = Encoder::new(
        csv(ForceQuote::Columns(vec!["x".into()])),
        &twice,
        vec![0, 1],
    )
    .unwrap();
    assert_eq!(
        spelled(&mut first, &[&[Some("1"), Some("2")]]),
        ["\"1\",2\n"]
    );
    let mut all = Encoder::new(csv(ForceQuote::All), &names, vec![0, 1]).unwrap();
    assert_eq!(
        spelled(&mut all, &[&[Some("1"), Some("x")]]),
        ["\"1\",\"x\"\n"]
    );
    assert_eq!(
        Encoder::new(
            csv(ForceQuote::Columns(vec!["nope".into()])),
            &names,
            vec![0, 1]
        )
        .unwrap_err(),
        "FORCE_QUOTE column \"nope\" not referenced by COPY"
    );
    let custom = CopyFormat::Csv(CsvOptions {
        delimiter: b';',
        null: b"\\N".to_vec(),
        header: false,
        quote: b'\'',
        escape: b'\\',
        force_quote: ForceQuote::None,
    });
    let mut e = Encoder::new(custom, &names, vec![0, 1]).unwrap();
    // A value spelled like the NULL string is quoted so it reads back as
    // text; inside quotes the escape character escapes itself too.
    assert_eq!(
        spelled(
            &mut e,
            &[&[Some("it's"), Some("\\N")], &[None, Some("a\\b")]]
        ),
        ["'it\\'s';'\\\\N'\n", "\\N;a\\b\n"]
    );
}

#[test]
fn binary_copy_has_its_file_header_trailer_and_lengths() {
    let mut e = Encoder::new(CopyFormat::Binary, &["a", "b"], vec![0, 1]).unwrap();
    assert_eq!(e.response(), [1, 0, 2, 0, 1, 0, 1]);
    assert_eq!(e.header(&["a", "b"]), None);
    let values: [Option<&[u8]>; 2] = [Some(&[0, 0, 0, 7]), None];
    let first = e.row(&values);
    let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
    expected.extend_from_slice(&[0; 8]);
    expected.extend_from_slice(&[0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(first, expected);
    assert_eq!(e.row(&values), expected[19..]);
    assert_eq!(e.finish().unwrap(), [0xff, 0xff]);
    // No rows: the header goes with the trailer.
    let mut empty = Encoder::new(CopyFormat::Binary, &["a"], vec![0]).unwrap();
    assert_eq!(empty.finish().unwrap().len(), 19 + 2);
}

#[test]
fn a_deeply_nested_copy_is_read_off_the_workers_stack() {
    // Deep enough to abort a tokio worker's 2 MiB stack if parsed on it.
    let sql = format!(
        "COPY (SELECT {}1{}) TO STDOUT",
        "(SELECT ".repeat(1000),
        ")".repeat(1000)
    );
    let outcome = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || masked_copy(&sql).map(|c| c.is_some()))
        .unwrap()
        .join()
        .expect("no panic");
    // Found, or refused as too deep to decode: either way no crash.
    match outcome {
        Ok(found) => assert!(found),
        Err(e) => assert!(e.contains("too deeply") || e.contains("deep"), "{e}"),
    }
}
