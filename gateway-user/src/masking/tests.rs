//! Unit tests: strategies, detectors (positive and negative), rules, planning precedence and row rewriting.
use std::{borrow::Cow, ops::Range, sync::Arc};

use super::*;

const KEY: &[u8] = b"test-key-0123456789abcdef";

fn mask(strategy: Strategy, value: &str) -> String {
    strategy.mask_text(value, KEY)
}

/// The substrings `find` reports in `text`.
fn found(find: fn(&[u8], &mut Vec<Range<usize>>), text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    find(text.as_bytes(), &mut out);
    out.into_iter().map(|r| &text[r]).collect()
}

fn text_col(
    source: Option<(&'static str, &'static str, &'static str)>,
    name: &'static str,
) -> ColumnInfo<'static> {
    ColumnInfo {
        source,
        ancestors: &[],
        output_name: name,
        type_oid: oid::TEXT,
        format: 0,
    }
}

fn detector(detector: Detector, strategy: Strategy) -> DetectorRule {
    DetectorRule {
        detector,
        strategy,
        name: detector.config_name().into(),
    }
}

fn all_detectors(strategy: Strategy) -> Vec<DetectorRule> {
    Detector::ALL
        .into_iter()
        .map(|d| detector(d, strategy))
        .collect()
}

fn policy() -> MaskingPolicy {
    MaskingPolicy {
        hash_key: Arc::from(KEY),
        ..MaskingPolicy::default()
    }
}

/// Applies `plan` to one row of text values and returns the new row as strings.
fn apply(plan: &ResultPlan, row: &[Option<&str>]) -> Option<Vec<Option<String>>> {
    let values: Vec<Option<&[u8]>> = row.iter().map(|v| v.map(str::as_bytes)).collect();
    plan.apply(&values).map(|new| {
        new.into_iter()
            .map(|v| v.map(|b| String::from_utf8(b.into_owned()).expect("utf-8")))
            .collect()
    })
}

// ---- strategies ----

#[test]
fn redact_replaces_whole_value() {
    assert_eq!(mask(Strategy::Redact, "secret value"), "***");
    assert_eq!(mask(Strategy::Redact, ""), "***");
}

#[test]
fn partial_keeps_last_characters() {
    let p4 = Strategy::Partial { keep_last: 4 };
    assert_eq!(mask(p4, "4111111111111111"), "************1111");
    assert_eq!(mask(p4, "abcd"), "****");
    assert_eq!(mask(p4, "ab"), "**");
    assert_eq!(mask(p4, ""), "");
    assert_eq!(mask(Strategy::Partial { keep_last: 0 }, "abc"), "***");
    // Non-ASCII takes the character-counting path; both agree on the same shapes.
    assert_eq!(mask(p4, "411111111111111é"), "************111é");
    assert_eq!(mask(p4, "abcé"), "****");
    assert_eq!(mask(p4, "é"), "*");
}

#[test]
fn partial_counts_characters_not_bytes() {
    let p2 = Strategy::Partial { keep_last: 2 };
    // 5 characters, 11 bytes: 3 stars and the last 2 characters, intact.
    assert_eq!(mask(p2, "žluťé"), "***ťé");
    assert_eq!(mask(p2, "日本語テキ"), "***テキ");
    assert_eq!(mask(Strategy::Partial { keep_last: 9 }, "日本"), "**");
}

#[test]
fn hash_is_stable_keyed_and_short() {
    let a = mask(Strategy::Hash, "alice@example.com");
    assert_eq!(a, mask(Strategy::Hash, "alice@example.com"));
    assert!(a.starts_with("hash:"));
    assert_eq!(a.len(), "hash:".len() + 16);
    assert!(a["hash:".len()..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(a, mask(Strategy::Hash, "bob@example.com"));
    let other_key = Strategy::Hash.mask_text("alice@example.com", b"another-key-0123456789");
    assert_ne!(a, other_key);
}

#[test]
fn hash_matches_hmac_sha256_reference() {
    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    let h = Strategy::Hash.mask_text("what do ya want for nothing?", b"Jefe");
    assert_eq!(h, "hash:5bdcc146bf60754e");
}

#[test]
fn strategy_from_config() {
    assert_eq!(Strategy::from_config("redact", None), Ok(Strategy::Redact));
    assert_eq!(Strategy::from_config("hash", None), Ok(Strategy::Hash));
    assert_eq!(
        Strategy::from_config("partial", None),
        Ok(Strategy::Partial { keep_last: 4 })
    );
    assert_eq!(
        Strategy::from_config("partial", Some(2)),
        Ok(Strategy::Partial { keep_last: 2 })
    );
    assert_eq!(
        Strategy::from_config("hash", Some(2)),
        Err(MaskingError::KeepNotAllowed("hash".into()))
    );
    let err = Strategy::from_config("blur", None).unwrap_err();
    assert_eq!(err, MaskingError::UnknownStrategy("blur".into()));
    assert!(err.to_string().contains("`redact`, `partial` or `hash`"));
}

// ---- detectors ----

#[test]
fn email_found_inside_text() {
    assert_eq!(
        found(
            find_emails,
            "contact me at a@b.com, or Jane.Doe+ci@mail.example.co.uk."
        ),
        ["a@b.com", "Jane.Doe+ci@mail.example.co.uk"]
    );
    assert_eq!(
        found(find_emails, "<x_y-z@sub-domain.io>"),
        ["x_y-z@sub-domain.io"]
    );
}

#[test]
fn email_lookalikes_not_found() {
    for text in [
        "user@localhost",
        "a@b.c",
        "@example.com",
        "ping me @ noon. ok",
        "x@-bad.com",
        "x@bad..com",
        "a@b.c0m",
        "no at sign here at all",
    ] {
        assert!(found(find_emails, text).is_empty(), "{text}");
    }
}

#[test]
fn card_numbers_luhn_valid_found() {
    assert_eq!(
        found(find_card_numbers, "card 4111111111111111 ok"),
        ["4111111111111111"]
    );
    assert_eq!(
        found(find_card_numbers, "4111 1111 1111 1111"),
        ["4111 1111 1111 1111"]
    );
    assert_eq!(
        found(find_card_numbers, "amex 3782-822463-10005."),
        ["3782-822463-10005"]
    );
    // A trailing group (an expiry year) does not hide the card before it.
    assert_eq!(
        found(find_card_numbers, "5555 5555 5555 4444 2029"),
        ["5555 5555 5555 4444"]
    );
}

#[test]
fn card_number_lookalikes_not_found() {
    for text in [
        "4111111111111112",                                      // Luhn-invalid 16 digits
        "4111 1111 1111 1112",                                   // same, grouped
        "411111111111",                                          // 12 digits
        "41111111111111111111111",                               // 23 digits: one long number
        "id4111111111111111",                                    // glued to a word
        "0000000000000000",                                      // zero-padded id
        "3.4111111111111111",                                    // fraction of a decimal
        "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21", // a list of numbers
        "41 11 11 11 11 11 11 11",                               // not a card's grouping
        "no digits",
    ] {
        assert!(found(find_card_numbers, text).is_empty(), "{text}");
    }
}

#[test]
fn ssn_found() {
    assert_eq!(found(find_us_ssns, "ssn: 123-45-6789."), ["123-45-6789"]);
    assert_eq!(found(find_us_ssns, "078-05-1120"), ["078-05-1120"]);
}

#[test]
fn invalid_ssns_not_found() {
    for text in [
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "1123-45-6789",
        "123-45-67890",
        "123-45-6789-1",
        "2024-01-01",
        "a123-45-6789",
        "12-345-6789",
    ] {
        assert!(found(find_us_ssns, text).is_empty(), "{text}");
    }
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

#[test]
fn jwt_found() {
    let text = format!("Authorization: Bearer {JWT}.");
    assert_eq!(found(find_jwts, &text), [JWT]);
    // Unsecured token: empty signature.
    let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
    assert_eq!(found(find_jwts, none), [none]);
}

#[test]
fn jwt_lookalikes_not_found() {
    for text in [
        // Header decodes to {"typ":"JWT"}: no alg.
        "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln",
        // Starts like a JWT but the header is not valid base64url JSON.
        "eyJ!!!.eyJzdWIiOiJ4In0.c2ln",
        "eyJhbGciOiJIUzI1NiJ9x.eyJzdWIiOiJ4In0.c2ln",
        // Only two segments.
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0",
        // Inside a longer base64 blob.
        "QUFBeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    ] {
        assert!(found(find_jwts, text).is_empty(), "{text}");
    }
}

#[test]
fn api_tokens_found() {
    let gh = format!("ghp_{}", "a1B2".repeat(9));
    let pat = format!("github_pat_11ABCDEFG0{}_{}", "x".repeat(12), "y".repeat(59));
    let google = format!("AIza{}", "Sy-_0123456789abcdefghijklmnopqrstu");
    let stripe = format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc");
    let slack = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
    for token in [
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAY34FZKBOKMUTVV7A",
        gh.as_str(),
        pat.as_str(),
        google.as_str(),
        stripe.as_str(),
        slack,
    ] {
        let text = format!("export TOKEN={token}; echo");
        assert_eq!(found(find_api_tokens, &text), [token], "{token}");
    }
}

#[test]
fn private_key_block_found_whole() {
    let pem =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc=\n-----END RSA PRIVATE KEY-----";
    let text = format!("key:\n{pem}\ntrailer");
    assert_eq!(found(find_api_tokens, &text), [pem]);
    // No END line: the body to the end of the value is the secret.
    assert_eq!(
        found(find_api_tokens, "-----BEGIN PRIVATE KEY-----\nMIIE\n"),
        ["-----BEGIN PRIVATE KEY-----\nMIIE"]
    );
    // In a JSON string, the block stops at the closing quote.
    let json = r#"{"k":"-----BEGIN EC PRIVATE KEY-----\nMHcC\n"}"#;
    assert_eq!(
        found(find_api_tokens, json),
        [r"-----BEGIN EC PRIVATE KEY-----\nMHcC\n"]
    );
}

#[test]
fn api_token_lookalikes_not_found() {
    for text in [
        "AKIAIOSFODNN7EXAMPL",   // 15 after the prefix
        "AKIAIOSFODNN7EXAMPLEX", // 17
        "XAKIAIOSFODNN7EXAMPLE", // tail of a word
        "ghp_short",
        "ghx_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_live_short",
        "xoxz-123456789012-1234",
        "xoxb-123",
        "AIzaTooShort",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "A plain sentence_with_underscores - and dashes, All Alone.",
    ] {
        assert!(found(find_api_tokens, text).is_empty(), "{text}");
    }
}

#[test]
fn detector_config_names_round_trip() {
    for d in Detector::ALL {
        assert_eq!(Detector::from_config(d.config_name()), Ok(d));
    }
    assert_eq!(
        Detector::from_config("iban"),
        Err(MaskingError::UnknownDetector("iban".into()))
    );
}

// ---- rules ----

#[test]
fn column_rule_three_parts_with_globs() {
    let r = ColumnRule::parse("*.*.ssn", Strategy::Redact, "ssn").unwrap();
    assert!(r.matches("public", "people", "ssn"));
    assert!(r.matches("hr", "staff", "ssn"));
    assert!(!r.matches("hr", "staff", "ssn_hash"));
    let r = ColumnRule::parse("billing.*.*", Strategy::Redact, "billing").unwrap();
    assert!(r.matches("billing", "invoices", "total"));
    assert!(!r.matches("public", "invoices", "total"));
    let r = ColumnRule::parse("public.customers.e?ail", Strategy::Redact, "x").unwrap();
    assert!(r.matches("public", "customers", "email"));
    assert_eq!(&*r.name, "x");
}

#[test]
fn column_rule_two_parts_means_public_schema() {
    let r = ColumnRule::parse("customers.email", Strategy::Redact, "x").unwrap();
    assert!(r.matches("public", "customers", "email"));
    assert!(!r.matches("billing", "customers", "email"));
}

#[test]
fn column_rule_matches_case_insensitively() {
    let r = ColumnRule::parse("Public.Customers.EMAIL", Strategy::Redact, "x").unwrap();
    assert!(r.matches("public", "customers", "email"));
    let r = ColumnRule::parse(" public . customers.email ", Strategy::Redact, "x").unwrap();
    assert!(r.matches("public", "customers", "email"));
}

#[test]
fn column_rule_dot_inside_class_is_not_a_separator() {
    let r = ColumnRule::parse("public.[.]odd.col", Strategy::Redact, "x").unwrap();
    assert!(r.matches("public", ".odd", "col"));
}

#[test]
fn column_rule_errors_are_precise() {
    let err = ColumnRule::parse("email", Strategy::Redact, "x").unwrap_err();
    assert_eq!(
        err,
        MaskingError::SpecParts {
            spec: "email".into(),
            parts: 1
        }
    );
    assert!(
        err.to_string()
            .contains("expected `schema.table.column` or `table.column`")
    );
    assert!(matches!(
        ColumnRule::parse("a.b.c.d", Strategy::Redact, "x"),
        Err(MaskingError::SpecParts { parts: 4, .. })
    ));
    assert_eq!(
        ColumnRule::parse("public..email", Strategy::Redact, "x").unwrap_err(),
        MaskingError::EmptySpecPart {
            spec: "public..email".into(),
            part: "table"
        }
    );
    let err = ColumnRule::parse("public.cust[omers.email", Strategy::Redact, "x").unwrap_err();
    assert!(matches!(&err, MaskingError::BadGlob { pattern, .. } if pattern == "cust[omers.email"));
    let err = ColumnRule::parse("public.***.email", Strategy::Redact, "x").unwrap_err();
    assert!(err.to_string().contains("invalid glob `***`"), "{err}");
}

#[test]
fn name_rules_are_case_insensitive() {
    let r = NameRule::parse("*password*", Strategy::Redact, "pw").unwrap();
    assert!(r.matches("user_PASSWORD_hash"));
    assert!(r.matches("Password"));
    assert!(!r.matches("passwd"));
    assert!(NameRule::parse("[", Strategy::Redact, "bad").is_err());
}

// ---- planning ----

#[test]
fn empty_policy_plans_noop() {
    let p = policy();
    assert!(p.is_empty());
    let plan = p.plan(&[
        text_col(None, "a"),
        text_col(Some(("public", "t", "c")), "c"),
    ]);
    assert!(plan.is_noop());
    assert_eq!(apply(&plan, &[Some("a@b.com"), Some("x")]), None);
}

#[test]
fn plan_precedence_column_then_name_then_scan() {
    let mut p = policy();
    p.columns
        .push(ColumnRule::parse("customers.email", Strategy::Hash, "col-rule").unwrap());
    p.names
        .push(NameRule::parse("email", Strategy::Redact, "name-rule").unwrap());
    p.detectors = all_detectors(Strategy::Redact);
    let plan = p.plan(&[
        // Source matches the column rule, even under an alias that a name rule matches.
        text_col(Some(("public", "customers", "email")), "EMAIL"),
        // No source rule: the name rule applies.
        text_col(Some(("public", "staff", "email")), "Email"),
        // Neither: text columns are scanned.
        text_col(Some(("public", "staff", "notes")), "notes"),
        // Computed text column: scanned.
        text_col(None, "concat"),
        // Table column of a non-text type: kept.
        ColumnInfo {
            source: Some(("public", "staff", "id")),
            ancestors: &[],
            output_name: "id",
            type_oid: oid::INT8,
            format: 0,
        },
    ]);
    let actions: Vec<_> = plan.actions().cloned().collect();
    assert_eq!(
        actions,
        [
            ColumnAction::Mask {
                strategy: Strategy::Hash,
                rule: "col-rule".into()
            },
            ColumnAction::Mask {
                strategy: Strategy::Redact,
                rule: "name-rule".into()
            },
            ColumnAction::Scan,
            ColumnAction::Scan,
            ColumnAction::Keep,
        ]
    );
    assert_eq!(
        plan.masked_columns().collect::<Vec<_>>(),
        [(0, "col-rule"), (1, "name-rule")]
    );
    assert_eq!(plan.scanned_columns().collect::<Vec<_>>(), [2, 3]);
    assert!(!plan.is_noop());
}

#[test]
fn a_parents_column_rule_covers_its_partitions() {
    let mut p = policy();
    p.columns
        .push(ColumnRule::parse("sales.customers.email", Strategy::Redact, "pii").unwrap());
    let ancestors = [
        ("sales".to_owned(), "customers_2026".to_owned()),
        ("sales".to_owned(), "customers".to_owned()),
    ];
    let column = |table, column, ancestors| ColumnInfo {
        source: Some(("sales", table, column)),
        ancestors,
        output_name: column,
        type_oid: oid::TEXT,
        format: 0,
    };
    let plan = p.plan(&[
        // A leaf two levels below the table the rule names.
        column("customers_2026_11", "email", &ancestors),
        // Another column of it: no rule.
        column("customers_2026_11", "name", &ancestors),
        // A table with the same column and no ancestors: no rule.
        column("prospects", "email", &[]),
    ]);
    assert_eq!(plan.masked_columns().collect::<Vec<_>>(), [(0, "pii")]);
}

/// A UNION arm, a scalar subquery or a recursive CTE hands a ruled column
/// through with no source (found in review: `SELECT email FROM customers
/// UNION ALL SELECT NULL` came back raw); in a statement reading a ruled
/// table such a column is redacted, whatever that table's rules do.
#[test]
fn unsourced_columns_of_a_ruled_read_are_redacted() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Redact);
    p.columns.push(
        ColumnRule::parse(
            "customers.email",
            Strategy::Partial { keep_last: 4 },
            "mail",
        )
        .unwrap(),
    );
    p.columns
        .push(ColumnRule::parse("hr.employees.salary", Strategy::Hash, "pay").unwrap());
    p.columns
        .push(ColumnRule::parse("*.people.ssn", Strategy::Redact, "ssn").unwrap());
    p.names
        .push(NameRule::parse("note", Strategy::Partial { keep_last: 9 }, "n").unwrap());

    let read = |tables: &[(Option<&str>, Option<&str>)]| p.reading_rule(tables.iter().copied());
    let name = |i: Option<usize>| i.map(|i| &*p.columns[i].name);
    // Unqualified: any schema.
    assert_eq!(name(read(&[(None, Some("customers"))])), Some("mail"));
    assert_eq!(
        name(read(&[(Some("public"), Some("Customers"))])),
        Some("mail")
    );
    assert_eq!(name(read(&[(Some("billing"), Some("customers"))])), None);
    assert_eq!(name(read(&[(None, Some("employees"))])), Some("pay"));
    assert_eq!(
        name(read(&[(None, Some("orders")), (Some("x"), Some("people"))])),
        Some("ssn")
    );
    assert_eq!(name(read(&[(None, Some("orders"))])), None);
    assert_eq!(name(read(&[])), None);
    // A table the statement reaches without naming it: any table.
    assert_eq!(name(read(&[(Some("hr"), None)])), Some("pay"));
    assert_eq!(name(read(&[(None, None)])), Some("mail"));

    let int4 = ColumnInfo {
        type_oid: oid::INT4,
        ..text_col(None, "n")
    };
    let columns = [
        text_col(None, "email"),
        text_col(None, "note"),
        int4,
        text_col(Some(("public", "customers", "name")), "name"),
        text_col(Some(("public", "customers", "email")), "email"),
    ];
    let reading = read(&[(None, Some("employees"))]).map(|rule| Reading {
        rule,
        changes_data: false,
    });
    let actions_of = |reading: Option<Reading>| -> Vec<ColumnAction> {
        p.plan_reading(&columns, reading)
            .actions()
            .cloned()
            .collect()
    };
    let actions = actions_of(reading);
    let redacted = ColumnAction::Mask {
        strategy: Strategy::Redact,
        rule: "pay".into(),
    };
    let redacted_pay = redacted.clone();
    assert_eq!(
        actions,
        [
            redacted.clone(),
            // Before the name rule, whose partial would show a computed tail.
            redacted.clone(),
            redacted,
            // A sourced column keeps its own planning.
            ColumnAction::Scan,
            ColumnAction::Mask {
                strategy: Strategy::Partial { keep_last: 4 },
                rule: "mail".into(),
            },
        ]
    );
    let plan = p.plan_reading(&columns, reading);
    assert_eq!(
        apply(
            &plan,
            &[Some("alice@example.com"), Some("x"), Some("7"), None, None]
        ),
        Some(vec![
            Some("***".into()),
            Some("***".into()),
            None,
            None,
            None
        ])
    );

    // A column whose source could not be looked up has none either: it is
    // withheld, as in any other statement.
    let mut plan = p.plan_reading(&columns, reading);
    plan.withhold([0, 4]);
    let actions: Vec<_> = plan.actions().cloned().collect();
    assert_eq!(actions[0], ColumnAction::Withhold);
    assert!(matches!(&actions[4], ColumnAction::Mask { rule, .. } if &**rule == "mail"));

    // Reading no ruled table: planned exactly as before.
    let unruled = read(&[(None, Some("orders"))]).map(|rule| Reading {
        rule,
        changes_data: false,
    });
    let before: Vec<_> = p.plan(&columns).actions().cloned().collect();
    let after: Vec<_> = p
        .plan_reading(&columns, unruled)
        .actions()
        .cloned()
        .collect();
    assert_eq!(before, after);
    assert_eq!(before[0], ColumnAction::Scan);
    assert!(matches!(&before[1], ColumnAction::Mask { rule, .. } if &**rule == "n"));
    assert_eq!(before[2], ColumnAction::Keep);

    // A statement that also changes data: a column straight from a table
    // may hold what it just copied there, so only a rule of its own
    // spares it redaction (found in review: `UPDATE customers SET name =
    // email … RETURNING name`).
    let changing = reading.map(|r| Reading {
        changes_data: true,
        ..r
    });
    let actions = actions_of(changing);
    assert_eq!(actions[3], redacted_pay, "sourced, no rule of its own");
    assert!(matches!(&actions[4], ColumnAction::Mask { rule, .. } if &**rule == "mail"));
}

/// Found in review: name rules saw the output name only, so `SELECT ssn
/// AS x FROM people` escaped `names = ["*ssn*"]`.
#[test]
fn name_rules_match_the_source_column_too() {
    let mut p = policy();
    p.names
        .push(NameRule::parse("*ssn*", Strategy::Redact, "ssn").unwrap());
    let plan = p.plan(&[
        text_col(Some(("hr", "people", "ssn")), "x"),
        text_col(Some(("hr", "people", "name")), "ssn_hint"),
        text_col(Some(("hr", "people", "name")), "name"),
        text_col(None, "x"),
    ]);
    assert_eq!(
        plan.masked_columns().collect::<Vec<_>>(),
        [(0, "ssn"), (1, "ssn")]
    );
}

#[test]
fn first_matching_rule_wins() {
    let mut p = policy();
    p.columns
        .push(ColumnRule::parse("*.*.ssn", Strategy::Redact, "first").unwrap());
    p.columns
        .push(ColumnRule::parse("hr.staff.ssn", Strategy::Hash, "second").unwrap());
    let plan = p.plan(&[text_col(Some(("hr", "staff", "ssn")), "ssn")]);
    assert_eq!(plan.masked_columns().collect::<Vec<_>>(), [(0, "first")]);
}

#[test]
fn without_detectors_unmatched_columns_are_kept() {
    let mut p = policy();
    p.names
        .push(NameRule::parse("secret", Strategy::Redact, "s").unwrap());
    let plan = p.plan(&[text_col(None, "other"), text_col(None, "Secret")]);
    let actions: Vec<_> = plan.actions().cloned().collect();
    assert_eq!(actions[0], ColumnAction::Keep);
    assert!(matches!(actions[1], ColumnAction::Mask { .. }));
}

#[test]
fn scan_targets_depend_on_type_and_format() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Redact);
    let col = |source, type_oid, format| ColumnInfo {
        source,
        ancestors: &[],
        output_name: "c",
        type_oid,
        format,
    };
    let src = Some(("public", "t", "c"));
    let plan = p.plan(&[
        col(None, oid::INT4, 0),          // cannot hold a match
        col(None, oid::INT8, 0),          // computed int8 may hold a card number
        col(src, oid::INT8, 0),           // table int8 without a rule: kept
        col(src, oid::JSONB, 1),          // jsonb binary: text after the version byte
        col(None, oid::INT8, 1),          // binary int8: scanned as its decimal text
        col(src, oid::TEXT_ARRAY, 0),     // text[]
        col(src, oid::FIRST_USER + 7, 0), // user-defined (citext, enum…)
        col(src, oid::BYTEA, 0),          // text bytea: scanned as the bytes it spells
    ]);
    let actions: Vec<_> = plan.actions().cloned().collect();
    use ColumnAction::{Keep, Scan};
    assert_eq!(actions, [Keep, Scan, Keep, Scan, Scan, Scan, Scan, Scan]);
}

/// Binary forms of built-in types that carry text or digits as they are
/// (`refcursor`, `xml`, `int8[]`) are not read as safe: a computed one is
/// withheld where a scan is due, as its text form would be scanned. Fixed
/// numbers and times still pass, and table columns of them are treated
/// like their text form.
#[test]
fn binary_builtins_that_can_carry_text_are_withheld_not_passed() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Redact);
    let computed = |type_oid, format| ColumnInfo {
        source: None,
        ancestors: &[],
        output_name: "c",
        type_oid,
        format,
    };
    const REFCURSOR: u32 = 1790;
    const XML: u32 = 142;
    const INT8_ARRAY: u32 = 1016;
    for ty in [REFCURSOR, XML] {
        // Text: scanned, and the value does not come back as it was.
        let text = apply(&p.plan(&[computed(ty, 0)]), &[Some("alice@example.com")]);
        assert!(
            matches!(&text, Some(row) if row[0].as_deref() != Some("alice@example.com")),
            "{ty} text: {text:?}"
        );
        let binary = apply(&p.plan(&[computed(ty, 1)]), &[Some("alice@example.com")]);
        assert_eq!(binary, Some(vec![None]), "{ty} binary");
    }
    // ARRAY[4111111111111111::bigint], binary: header, then one element.
    let mut array = Vec::new();
    for word in [1i32, 0, 20, 1, 1, 8] {
        array.extend_from_slice(&word.to_be_bytes());
    }
    array.extend_from_slice(&4_111_111_111_111_111i64.to_be_bytes());
    let out = p
        .plan(&[computed(INT8_ARRAY, 1)])
        .apply(&[Some(&array[..])]);
    assert_eq!(out.map(|row| row[0].is_none()), Some(true));
    // Still passed: fixed-size values, and a table column of such a type.
    for ty in [oid::INT4, oid::FLOAT8, oid::UUID, oid::TIMESTAMPTZ] {
        let plan = p.plan(&[computed(ty, 1)]);
        assert_eq!(
            plan.actions().cloned().collect::<Vec<_>>(),
            [ColumnAction::Keep],
            "{ty}"
        );
    }
    let table = ColumnInfo {
        source: Some(("public", "t", "ids")),
        ..computed(INT8_ARRAY, 1)
    };
    assert_eq!(
        p.plan(&[table]).actions().cloned().collect::<Vec<_>>(),
        [ColumnAction::Keep]
    );
}

/// Hostile values built from a detector's own prefix stay linear: each
/// byte is read a bounded number of times (both of these were quadratic,
/// and a value of a few MB held a runtime worker for hours).
#[test]
fn detectors_stay_linear_on_values_made_of_their_prefixes() {
    let slack = "axoxb-".repeat(200_000);
    assert!(found(find_api_tokens, &slack).is_empty());
    let pem = "-----BEGIN RSA PRIVATE KEY-----x-----END -----\n".repeat(25_000);
    let keys = found(find_api_tokens, &pem);
    assert_eq!(keys.len(), 25_000);
    assert!(
        keys.iter().all(|k| k.ends_with("-----END -----")),
        "{:?}",
        &keys[..2]
    );
}

#[test]
fn text_bytea_is_read_as_the_bytes_it_spells() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Redact);
    let bytea = |source| ColumnInfo {
        source,
        ancestors: &[],
        output_name: "b",
        type_oid: oid::BYTEA,
        format: 0,
    };
    let plan = p.plan(&[bytea(None), bytea(Some(("public", "t", "b")))]);
    let hex = |s: &str| {
        let digits: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        format!("\\x{digits}")
    };
    let email = hex("alice@example.com");
    let card = hex("4111 1111 1111 1111");
    let plain = hex("nothing to see");
    // convert_to(email, 'UTF8'), computed or stored: NULL.
    assert_eq!(
        apply(&plan, &[Some(&email), Some(&card)]),
        Some(vec![None, None])
    );
    // The escape format shows printable bytes as they are.
    assert_eq!(
        apply(&plan, &[Some("alice@example.com\\000"), Some(&plain)]),
        Some(vec![None, Some(plain.clone())])
    );
    assert_eq!(apply(&plan, &[Some(&plain), Some("\\x")]), None);
    // bytea[]: each element's run apart.
    let array = format!("{{\"\\{email}\",\"\\{plain}\"}}");
    let arrays = p.plan(&[ColumnInfo {
        type_oid: oid::BYTEA_ARRAY,
        ..bytea(None)
    }]);
    assert_eq!(apply(&arrays, &[Some(&array)]), Some(vec![None]));
}

// ---- applying ----

#[test]
fn apply_returns_none_when_nothing_changes() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Redact);
    let plan = p.plan(&[
        text_col(None, "a"),
        text_col(Some(("public", "t", "b")), "b"),
    ]);
    assert!(!plan.is_noop());
    assert_eq!(
        apply(&plan, &[Some("plain text"), Some("no secrets; 42 - 7")]),
        None
    );
    assert_eq!(apply(&plan, &[None, None]), None);
}

#[test]
fn apply_masks_and_borrows_the_rest() {
    let mut p = policy();
    p.columns.push(
        ColumnRule::parse("customers.card", Strategy::Partial { keep_last: 4 }, "pan").unwrap(),
    );
    p.detectors = vec![detector(Detector::Email, Strategy::Redact)];
    let plan = p.plan(&[
        text_col(Some(("public", "customers", "id")), "id"),
        text_col(Some(("public", "customers", "card")), "c"),
        text_col(None, "note"),
    ]);
    let values: [Option<&[u8]>; 3] = [
        Some(b"17"),
        Some(b"4111111111111111"),
        Some(b"contact me at a@b.com"),
    ];
    let row = plan.apply(&values).expect("changed");
    assert!(matches!(row[0], Some(Cow::Borrowed(b"17"))));
    assert_eq!(row[1].as_deref(), Some(&b"************1111"[..]));
    assert_eq!(row[2].as_deref(), Some(&b"contact me at ***"[..]));
    // NULL stays NULL, in a masked column too.
    let row = plan
        .apply(&[None, None, Some(b"x@y.org")])
        .expect("changed");
    assert_eq!(row[0], None);
    assert_eq!(row[1], None);
    assert_eq!(row[2].as_deref(), Some(&b"***"[..]));
    assert_eq!(plan.apply(&[None, None, None]), None);
}

#[test]
fn detectors_replace_only_matches_with_their_strategy() {
    let mut p = policy();
    p.detectors = vec![
        detector(Detector::Email, Strategy::Hash),
        detector(Detector::CardNumber, Strategy::Partial { keep_last: 4 }),
        detector(Detector::UsSsn, Strategy::Redact),
    ];
    let plan = p.plan(&[text_col(None, "log")]);
    let row = apply(
        &plan,
        &[Some(
            "user a@b.com paid with 4111 1111 1111 1111, ssn 123-45-6789",
        )],
    )
    .unwrap();
    let email_hash = Strategy::Hash.mask_text("a@b.com", KEY);
    assert_eq!(
        row[0].as_deref(),
        Some(format!("user {email_hash} paid with ***************1111, ssn ***").as_str())
    );
}

#[test]
fn overlapping_hits_are_masked_together() {
    let mut p = policy();
    // The card detector sees 4111111111111111 inside the email's local part.
    p.detectors = vec![
        detector(Detector::CardNumber, Strategy::Redact),
        detector(Detector::Email, Strategy::Redact),
    ];
    let plan = p.plan(&[text_col(None, "x")]);
    assert_eq!(
        apply(&plan, &[Some("id 4111111111111111@cards.example.com end")]).unwrap()[0].as_deref(),
        Some("id *** end")
    );
}

#[test]
fn binary_non_text_masks_to_null() {
    let mut p = policy();
    p.columns
        .push(ColumnRule::parse("t.*", Strategy::Redact, "all").unwrap());
    let col = |c, type_oid, format| ColumnInfo {
        source: Some(("public", "t", c)),
        ancestors: &[],
        output_name: c,
        type_oid,
        format,
    };
    let plan = p.plan(&[
        col("a", oid::INT4, 1),
        col("b", oid::JSONB, 1),
        col("c", oid::INT4, 0),
        col("d", oid::TEXT, 1),
        col("e", oid::BPCHAR, 1),
        col("f", oid::JSON, 0),
    ]);
    let values: [Option<&[u8]>; 6] = [
        Some(&[0, 0, 0, 42]),
        Some(b"\x01{\"a\":1}"),
        Some(b"42"),
        Some(b"secret"),
        Some(b"ab   "),
        Some(b"{\"a\":1}"),
    ];
    let row = plan.apply(&values).unwrap();
    assert_eq!(row[0], None);
    assert_eq!(row[1], None);
    assert_eq!(row[2], None);
    assert_eq!(row[3].as_deref(), Some(&b"***"[..]));
    assert_eq!(row[4].as_deref(), Some(&b"***"[..]));
    // json stays a JSON document.
    assert_eq!(row[5].as_deref(), Some(&br#""***""#[..]));
}

#[test]
fn json_masks_stay_valid_json() {
    let mut p = policy();
    p.names
        .push(NameRule::parse("doc", Strategy::Partial { keep_last: 3 }, "doc").unwrap());
    p.detectors = vec![detector(
        Detector::ApiToken,
        Strategy::Partial { keep_last: 1 },
    )];
    let json = |name| ColumnInfo {
        source: None,
        ancestors: &[],
        output_name: name,
        type_oid: oid::JSONB,
        format: 0,
    };
    let plan = p.plan(&[json("doc"), json("other")]);
    let row = apply(
        &plan,
        &[
            Some(r#"{"a":"\""}"#),
            Some(r#"{"k":"-----BEGIN PRIVATE KEY-----\nMIIE\\"}"#),
        ],
    )
    .unwrap();
    // Kept characters `""}` are escaped inside the JSON string.
    assert_eq!(row[0].as_deref(), Some(r#""*******\"\"}""#));
    // A kept `\` must not escape the closing quote.
    let masked = row[1].as_deref().unwrap();
    assert!(
        masked.starts_with(r#"{"k":"**"#) && masked.ends_with(r#"*"}"#),
        "{masked}"
    );
}

#[test]
fn json_hits_never_split_an_escape() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Partial { keep_last: 2 });
    let plan = p.plan(&[ColumnInfo {
        source: None,
        ancestors: &[],
        output_name: "doc",
        type_oid: oid::JSON,
        format: 0,
    }]);
    // The email's local part starts at the `n` of `\n`: the backslash goes too.
    let row = apply(&plan, &[Some(r#"{"k":"line\nbob@x.com"}"#)]).unwrap();
    assert_eq!(row[0].as_deref(), Some(r#"{"k":"line*********om"}"#));
    // An unterminated key ending in an escaped backslash keeps the closing quote.
    let row = apply(&plan, &[Some(r#"["-----BEGIN PRIVATE KEY-----\nMIIE\\"]"#)]).unwrap();
    let masked = row[0].as_deref().unwrap();
    assert!(
        masked.starts_with(r#"["***"#) && masked.ends_with(r#"**"]"#),
        "{masked}"
    );
}

#[test]
fn json_array_hit_nulls_the_value() {
    let mut p = policy();
    p.detectors = vec![detector(Detector::Email, Strategy::Redact)];
    let plan = p.plan(&[ColumnInfo {
        source: Some(("public", "t", "docs")),
        ancestors: &[],
        output_name: "docs",
        type_oid: oid::JSONB_ARRAY,
        format: 0,
    }]);
    assert_eq!(plan.scanned_columns().collect::<Vec<_>>(), [0]);
    let row = plan
        .apply(&[Some(br#"{"{\"to\": \"a@b.com\"}"}"#)])
        .unwrap();
    assert_eq!(row[0], None);
}

#[test]
fn plans_and_policies_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<MaskingPolicy>();
    send_sync::<ResultPlan>();
}

#[test]
fn jsonb_binary_is_scanned_after_its_version_byte() {
    let mut p = policy();
    p.detectors = vec![detector(Detector::Email, Strategy::Redact)];
    let plan = p.plan(&[ColumnInfo {
        source: Some(("public", "t", "doc")),
        ancestors: &[],
        output_name: "doc",
        type_oid: oid::JSONB,
        format: 1,
    }]);
    let row = plan.apply(&[Some(b"\x01{\"to\":\"a@b.com\"}")]).unwrap();
    assert_eq!(row[0].as_deref(), Some(&b"\x01{\"to\":\"***\"}"[..]));
    // An unknown jsonb version cannot be read: fail closed.
    let row = plan.apply(&[Some(b"\x02{\"to\":\"a@b.com\"}")]).unwrap();
    assert_eq!(row[0], None);
}

#[test]
fn detector_hit_in_non_text_value_nulls_it() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Redact);
    let plan = p.plan(&[ColumnInfo {
        source: None,
        ancestors: &[],
        output_name: "card",
        type_oid: oid::INT8,
        format: 0,
    }]);
    assert_eq!(plan.apply(&[Some(b"4111111111111111")]).unwrap()[0], None);
    assert_eq!(plan.apply(&[Some(b"4111111111111112")]), None);
}

#[test]
fn text_array_hits_are_replaced_inside_the_literal() {
    let mut p = policy();
    p.detectors = vec![detector(Detector::Email, Strategy::Redact)];
    let plan = p.plan(&[ColumnInfo {
        source: Some(("public", "t", "cc")),
        ancestors: &[],
        output_name: "cc",
        type_oid: oid::TEXT_ARRAY,
        format: 0,
    }]);
    assert_eq!(
        apply(&plan, &[Some(r#"{a@b.com,"x y@z.io"}"#)]).unwrap()[0].as_deref(),
        Some(r#"{***,"x ***"}"#)
    );
}

#[test]
fn bpchar_padding_is_ignored_by_hash_and_partial() {
    let mut p = policy();
    p.names
        .push(NameRule::parse("h", Strategy::Hash, "h").unwrap());
    p.names
        .push(NameRule::parse("p", Strategy::Partial { keep_last: 2 }, "p").unwrap());
    let col = |name| ColumnInfo {
        source: None,
        ancestors: &[],
        output_name: name,
        type_oid: oid::BPCHAR,
        format: 0,
    };
    let plan = p.plan(&[col("h"), col("p")]);
    let row = apply(&plan, &[Some("ab    "), Some("abcd   ")]).unwrap();
    assert_eq!(row[0].as_deref(), Some(mask(Strategy::Hash, "ab").as_str()));
    assert_eq!(row[1].as_deref(), Some("**cd"));
}

#[test]
fn hash_in_plan_uses_the_policy_key() {
    let mut p = policy();
    p.names
        .push(NameRule::parse("e", Strategy::Hash, "e").unwrap());
    let cols = [text_col(None, "e")];
    let a = apply(&p.plan(&cols), &[Some("v")]).unwrap();
    assert_eq!(a, apply(&p.plan(&cols), &[Some("v")]).unwrap());
    p.hash_key = Arc::from(&b"a-different-key-0123456789"[..]);
    let b = apply(&p.plan(&cols), &[Some("v")]).unwrap();
    assert_ne!(a, b);
}

#[test]
fn column_count_mismatch_fails_closed() {
    let mut p = policy();
    p.detectors = all_detectors(Strategy::Redact);
    let plan = p.plan(&[text_col(None, "a")]);
    assert_eq!(
        plan.apply(&[Some(b"x"), Some(b"y")]),
        Some(vec![None, None])
    );
}

#[test]
fn validate_requires_a_strong_key_for_hash() {
    let mut p = MaskingPolicy::default();
    assert_eq!(p.validate(), Ok(()));
    p.names
        .push(NameRule::parse("e", Strategy::Hash, "e").unwrap());
    assert_eq!(
        p.validate(),
        Err(MaskingError::WeakHashKey { len: 0, min: 16 })
    );
    p.hash_key = Arc::from(KEY);
    assert_eq!(p.validate(), Ok(()));
    assert!(
        !format!("{p:?}").contains("test-key"),
        "key must not be logged"
    );
}

#[test]
fn binary_arrays_and_records_are_nulled_where_detectors_would_scan() {
    let policy = MaskingPolicy {
        detectors: vec![DetectorRule {
            detector: Detector::CardNumber,
            strategy: Strategy::Redact,
            name: Arc::from("cards"),
        }],
        ..MaskingPolicy::default()
    };
    // text[] and record in binary, as tokio-postgres asks for them.
    let columns = [
        ColumnInfo {
            source: None,
            ancestors: &[],
            output_name: "array_agg",
            type_oid: oid::TEXT_ARRAY,
            format: 1,
        },
        ColumnInfo {
            source: None,
            ancestors: &[],
            output_name: "row",
            type_oid: oid::RECORD,
            format: 1,
        },
        ColumnInfo {
            source: None,
            ancestors: &[],
            output_name: "count",
            type_oid: oid::INT8,
            format: 1,
        },
    ];
    let plan = policy.plan(&columns);
    let values: [Option<&[u8]>; 3] = [
        Some(b"\x00binary"),
        Some(b"\x00rec"),
        Some(&[0, 0, 0, 0, 0, 0, 0, 3]),
    ];
    let out = plan.apply(&values).expect("unreadable values change");
    assert_eq!(out[0], None);
    assert_eq!(out[1], None);
    assert_eq!(out[2].as_deref(), Some(&[0u8, 0, 0, 0, 0, 0, 0, 3][..]));
}

#[test]
fn withheld_columns_become_null_and_rule_masks_stay() {
    let policy = MaskingPolicy {
        columns: vec![
            ColumnRule::parse("public.customers.email", Strategy::Redact, "emails")
                .expect("valid rule"),
        ],
        ..MaskingPolicy::default()
    };
    let column = |name, source| ColumnInfo {
        source,
        ancestors: &[],
        output_name: name,
        type_oid: oid::TEXT,
        format: 0,
    };
    let mut plan = policy.plan(&[
        column("email", Some(("public", "customers", "email"))),
        column("x", None),
        column("y", None),
    ]);
    assert_eq!(plan.masked_columns().count(), 1);
    // Column 1's table could not be looked up: withheld; 0 keeps its rule.
    plan.withhold([0, 1]);
    assert!(!plan.is_noop());
    let masked: Vec<_> = plan.masked_columns().collect();
    assert_eq!(masked, [(0, "emails"), (1, WITHHELD_RULE)]);
    let values = [
        Some(&b"a@b.co"[..]),
        Some(&b"secret"[..]),
        Some(&b"kept"[..]),
    ];
    let row = plan.apply(&values).expect("changed");
    assert_eq!(row[0].as_deref(), Some(&b"***"[..]));
    assert_eq!(row[1], None);
    assert_eq!(row[2].as_deref(), Some(&b"kept"[..]));
}

#[test]
fn scrub_text_masks_detector_hits_in_free_text() {
    let policy = MaskingPolicy {
        detectors: vec![DetectorRule {
            detector: Detector::Email,
            strategy: Strategy::Redact,
            name: "emails".into(),
        }],
        ..MaskingPolicy::default()
    };
    assert_eq!(
        policy
            .scrub_text(r#"invalid input syntax for type integer: "alice@example.com""#)
            .as_deref(),
        Some(r#"invalid input syntax for type integer: "***""#)
    );
    assert_eq!(policy.scrub_text("relation \"t\" does not exist"), None);
    assert_eq!(
        MaskingPolicy::default().scrub_text("alice@example.com"),
        None
    );
}

#[test]
fn binary_numbers_are_scanned_as_their_decimal_text() {
    let policy = MaskingPolicy {
        detectors: vec![DetectorRule {
            detector: Detector::CardNumber,
            strategy: Strategy::Redact,
            name: "cards".into(),
        }],
        ..MaskingPolicy::default()
    };
    let computed = |type_oid| ColumnInfo {
        source: None,
        ancestors: &[],
        output_name: "n",
        type_oid,
        format: 1,
    };
    let int8 = policy.plan(&[computed(oid::INT8)]);
    let card = 4_111_111_111_111_111_i64.to_be_bytes();
    assert_eq!(int8.apply(&[Some(&card[..])]).expect("masked"), [None]);
    let small = 42_i64.to_be_bytes();
    assert!(int8.apply(&[Some(&small[..])]).is_none());
    assert_eq!(
        int8.apply(&[Some(&b"short"[..])]).expect("malformed"),
        [None]
    );

    // numeric 4111111111111111: 4 base-10000 digits, weight 3.
    let numeric = policy.plan(&[computed(oid::NUMERIC)]);
    let mut card = vec![0, 4, 0, 3, 0, 0, 0, 0];
    for d in [4111u16, 1111, 1111, 1111] {
        card.extend_from_slice(&d.to_be_bytes());
    }
    assert_eq!(numeric.apply(&[Some(&card[..])]).expect("masked"), [None]);
    // 1234.5678 (weight 0, dscale 4): no card.
    let mut small = vec![0, 2, 0, 0, 0, 0, 0, 4];
    for d in [1234u16, 5678] {
        small.extend_from_slice(&d.to_be_bytes());
    }
    assert!(numeric.apply(&[Some(&small[..])]).is_none());
    // 0.4111111111111111 (weight -1, dscale 16) decodes as such; as in text
    // format, digits after a decimal point are a measurement, not a card.
    let mut fraction = vec![0, 4, 0xff, 0xff, 0, 0, 0, 16];
    for d in [4111u16, 1111, 1111, 1111] {
        fraction.extend_from_slice(&d.to_be_bytes());
    }
    assert!(numeric.apply(&[Some(&fraction[..])]).is_none());
    // -4111111111111111 (sign 0x4000): the minus is not glued to the digits.
    card[4] = 0x40;
    assert_eq!(numeric.apply(&[Some(&card[..])]).expect("masked"), [None]);
}

#[test]
fn a_whole_row_holding_a_masked_column_is_masked_as_null() {
    // `SELECT c FROM customers c`: RowDescription names the table with
    // attribute 0 and a composite type; the record carries every column.
    let policy = MaskingPolicy {
        columns: vec![
            ColumnRule::parse(
                "customers.salary",
                Strategy::Partial { keep_last: 4 },
                "pay",
            )
            .unwrap(),
        ],
        ..policy()
    };
    let columns = [
        ("public", "customers", "id"),
        ("public", "customers", "salary"),
    ];
    let rule = columns
        .iter()
        .find_map(|c| policy.column_rule(*c, &[]))
        .expect("salary is masked");
    assert_eq!(&*rule.name, "pay");
    // Through a parent, as for a single column.
    let parent = [("public".to_owned(), "customers".to_owned())];
    assert!(
        policy
            .column_rule(("public", "customers_2026", "salary"), &parent)
            .is_some()
    );
    assert!(
        policy
            .column_rule(("public", "orders", "salary"), &[])
            .is_none()
    );

    for format in [0, 1] {
        let record = ColumnInfo {
            source: None,
            ancestors: &[],
            output_name: "c",
            type_oid: 16396,
            format,
        };
        let mut plan = policy.plan(&[record, text_col(None, "note")]);
        // Without detectors a computed column is kept: the leak being closed.
        assert!(plan.is_noop());
        plan.mask_column(0, rule);
        assert_eq!(
            plan.masked_columns().collect::<Vec<_>>(),
            [(0, "pay")],
            "format {format}"
        );
        assert_eq!(
            apply(&plan, &[Some("(1,100000)"), Some("n")]),
            Some(vec![None, Some("n".to_owned())]),
            "format {format}"
        );
    }
    // Even a text column masked this way loses its whole value.
    let mut plan = policy.plan(&[text_col(None, "t")]);
    plan.mask_column(0, rule);
    assert_eq!(apply(&plan, &[Some("(1,100000)")]), Some(vec![None]));
}
