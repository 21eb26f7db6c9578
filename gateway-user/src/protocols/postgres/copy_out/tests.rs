//! Unit tests: COPY statements found and described, text and CSV rows split, masked and re-spelled.
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::masking::{ColumnInfo, MaskingPolicy, NameRule, Strategy, oid};

/// A plan masking columns named `secret*` with `redact`, over `names`.
fn plan(names: &[&'static str]) -> Arc<ResultPlan> {
    let policy = MaskingPolicy {
        names: vec![NameRule::parse("secret*", Strategy::Redact, "secrets").unwrap()],
        hash_key: Arc::from(&b"0123456789abcdef0123456789abcdef"[..]),
        ..MaskingPolicy::default()
    };
    let columns: Vec<ColumnInfo<'_>> = names
        .iter()
        .map(|name| ColumnInfo {
            source: None,
            ancestors: &[],
            output_name: name,
            type_oid: oid::TEXT,
            format: 0,
        })
        .collect();
    Arc::new(policy.plan(&columns))
}

fn only(sql: &str) -> CopyOut {
    let mut all = copy_outs(sql).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn rows(format: CopyFormat, names: &[&'static str], input: &[&str]) -> Vec<String> {
    let mut rows = CopyRows::new(plan(names), format).unwrap();
    input
        .iter()
        .map(|row| {
            let bytes = Bytes::copy_from_slice(row.as_bytes());
            match rows.mask(&bytes).unwrap() {
                Some(masked) => String::from_utf8(masked.to_vec()).unwrap(),
                None => (*row).to_owned(),
            }
        })
        .collect()
}

fn text_default() -> CopyFormat {
    only("COPY t TO STDOUT").format.unwrap()
}

#[test]
fn finds_each_copy_to_stdout_in_order() {
    let all = copy_outs(
        "SELECT 1; COPY public.t (a, \"B\") TO STDOUT; COPY t FROM STDIN; \
         COPY (SELECT email FROM c WHERE id = 1) TO STDOUT (FORMAT csv, HEADER); \
         COPY t TO '/tmp/x'; COPY \"we\"\"ird\" TO STDOUT WITH CSV DELIMITER ';'",
    )
    .unwrap();
    let layouts: Vec<&str> = all.iter().map(|c| c.layout_sql.as_str()).collect();
    assert_eq!(
        layouts,
        [
            "SELECT \"a\", \"B\" FROM ONLY \"public\".\"t\"",
            "SELECT email FROM c WHERE id = 1",
            "SELECT * FROM ONLY \"we\"\"ird\"",
        ]
    );
    assert_eq!(all[0].format, Ok(text_default()));
    // Only a COPY nothing in its text runs before can be described ahead.
    assert!(all.iter().all(|c| !c.first));
    assert!(only("COPY t TO STDOUT; SELECT 1").first);
    let CopyFormat::Csv(csv) = all[1].format.clone().unwrap() else {
        panic!("{:?}", all[1].format)
    };
    assert!(csv.header && csv.delimiter == b',' && csv.quote == b'"' && csv.escape == b'"');
    let CopyFormat::Csv(csv) = all[2].format.clone().unwrap() else {
        panic!("{:?}", all[2].format)
    };
    assert!(!csv.header && csv.delimiter == b';');
}

#[test]
fn options_that_cannot_be_masked_are_named() {
    assert_eq!(
        only("COPY t TO STDOUT (FORMAT binary)").format,
        Ok(CopyFormat::Binary)
    );
    assert_eq!(
        only("COPY t TO STDOUT (ENCODING 'LATIN1')").format,
        Err("COPY option ENCODING is not supported with masking".into())
    );
    assert!(only("COPY t TO STDOUT (ENCODING 'UTF8')").format.is_ok());
    assert_eq!(
        only("COPY t TO STDOUT (DELIMITER '||')").format,
        Err("COPY DELIMITER must be a single ASCII character".into())
    );
    let binary = CopyRows::new(plan(&["secret"]), CopyFormat::Binary);
    assert!(binary.is_err());
    // Nothing to mask: binary rows pass.
    assert!(CopyRows::new(plan(&["id"]), CopyFormat::Binary).is_ok());
}

#[test]
fn text_rows_are_masked_and_escaped() {
    let out = rows(
        text_default(),
        &["id", "secret", "note"],
        &[
            "1\thunter2\tplain\n",
            "2\t\\N\ttab\\there\n",
            "3\tback\\\\slash\\ttab\tx\n",
        ],
    );
    assert_eq!(
        out,
        [
            "1\t***\tplain\n",
            // NULL stays NULL; an untouched field keeps the server's escapes.
            "2\t\\N\ttab\\there\n",
            "3\t***\tx\n",
        ]
    );
}

#[test]
fn text_escapes_round_trip() {
    let options = text::TextOptions {
        delimiter: b'|',
        null: b"NULL".to_vec(),
        header: false,
    };
    let raw = b"a\\|b\\\\c\\nd\\101\\x41\\q";
    let fields = text::split(raw, &options);
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].value.as_deref(), Some(&b"a|b\\c\ndAAq"[..]));
    let mut out = Vec::new();
    text::encode(fields[0].value.as_deref(), &options, &mut out);
    assert_eq!(out, b"a\\|b\\\\c\\ndAAq");
    let fields = text::split(b"NULL|x|", &options);
    assert_eq!(fields.len(), 3);
    assert!(fields[0].value.is_none());
    assert_eq!(fields[2].value.as_deref(), Some(&b""[..]));
}

#[test]
fn csv_rows_are_masked_and_quoted() {
    let format = only("COPY t TO STDOUT (FORMAT csv, HEADER)")
        .format
        .unwrap();
    let out = rows(
        format,
        &["id", "secret", "note"],
        &[
            "id,secret,note\n",
            "1,\"with,comma \"\"quoted\"\"\",plain\n",
            "2,,\"\"\n",
            "3,\"multi\nline\",x\n",
        ],
    );
    assert_eq!(
        out,
        [
            // The header is column names: forwarded as is.
            "id,secret,note\n",
            "1,\"***\",plain\n",
            // Unquoted empty is NULL and stays NULL; a quoted empty string is kept.
            "2,,\"\"\n",
            "3,\"***\",x\n",
        ]
    );
}

#[test]
fn csv_custom_quote_and_escape() {
    let options = csv::CsvOptions {
        delimiter: b';',
        null: b"\\N".to_vec(),
        header: false,
        quote: b'\'',
        escape: b'\\',
    };
    let fields = csv::split(b"'it\\'s';\\N;'a\\\\b'", &options).unwrap();
    let values: Vec<Option<&[u8]>> = fields.iter().map(|f| f.value.as_deref()).collect();
    assert_eq!(values, [Some(&b"it's"[..]), None, Some(&b"a\\b"[..])]);
    let mut out = Vec::new();
    csv::encode(Some(b"o'k\\"), &options, &mut out);
    assert_eq!(out, b"'o\\'k\\\\'");
    assert!(csv::split(b"'open", &options).is_err());
}

#[test]
fn a_row_with_the_wrong_width_is_nulled() {
    let out = rows(text_default(), &["id", "secret"], &["1\ta\tb\n"]);
    assert_eq!(out, ["\\N\t\\N\t\\N\n"]);
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
        .spawn(move || copy_outs(&sql).map(|all| all.len()))
        .unwrap()
        .join()
        .expect("no panic");
    // Found, or refused as too deep to decode: either way no crash.
    match outcome {
        Ok(n) => assert_eq!(n, 1),
        Err(e) => assert!(e.contains("too deeply") || e.contains("deep"), "{e}"),
    }
}
