//! Unit tests of PostgreSQL mediation: `[target.postgres]`, `[rule.postgres]`, `[[masking]]`, session rules and statement decisions.
use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc};

use super::{
    tests::{Files, errors, flow, load, load_one, only_error},
    *,
};
use crate::{
    masking::Strategy,
    protocols::postgres::{
        classify::{Access, Classification, Flag, Statement, StatementClass, TableRef},
        search_path::SearchPath,
    },
};

/// The server's default search_path for a session of role `app_rw`.
fn default_path() -> SearchPath {
    SearchPath::parse(r#""$user", public"#, "app_rw").expect("the default path parses")
}

/// 1-based line and column of the first `needle` in `text`, where an error
/// about it must point.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the policy"));
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn position(d: &Diagnostic) -> (usize, usize) {
    (d.line, d.col)
}

/// A secret file with `mode`.
fn secret(files: &Files, name: &str, content: &str, mode: u32) -> PathBuf {
    let path = files.write(name, content);
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// Two postgres targets and a tcp one; `app_rw` has credentials in
/// orders-db only. Rules and masking are appended by each test.
fn targets(files: &Files) -> String {
    let rw = secret(files, "secrets/orders-app_rw", "rw-password\n", 0o600);
    let ro = secret(files, "secrets/orders-app_ro", "ro-password", 0o600);
    let ro2 = secret(files, "secrets/stats-app_ro", "x", 0o400);
    format!(
        r#"[[target]]
name = "orders-db"
addresses = ["127.0.0.3"]
ports = [5432]
protocol = "postgres"

[target.postgres]
upstream = "127.0.0.1:54321"
[target.postgres.credentials.app_rw]
password_file = "{}"
[target.postgres.credentials.app_ro]
password_file = "{}"

[[target]]
name = "stats-db"
addresses = ["127.0.0.4"]
ports = [5432]
protocol = "postgres"

[target.postgres]
tls = "require"
max_message_bytes = 1024
[target.postgres.credentials.app_ro]
password_file = "{}"

[[target]]
name = "web"
addresses = ["127.0.0.0/8"]
ports = ["1-65535"]
"#,
        rw.display(),
        ro.display(),
        ro2.display()
    )
}

fn with_targets(files: &Files, rest: &str) -> String {
    format!(
        "[approvals]\napprovers = [\"root\"]\n\n{}\n{rest}",
        targets(files)
    )
}

const SPEC_RULE: &str = r#"[[rule]]
name = "ci-reads-orders"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
[rule.postgres]
roles = ["app_ro", "app_rw"]
allow = ["read", "write", "transaction", "other"]
deny = ["ddl", "drop", "delete_without_where"]
approve = ["truncate"]
[[rule.postgres.tables]]
tables = ["billing.*"]
deny = ["write"]
approve = []
"#;

fn policy(files: &Files, rest: &str) -> Policy {
    let text = with_targets(files, rest);
    match load_one(files, &text) {
        Ok(policy) => policy,
        Err(e) => panic!("policy does not load:\n{e}"),
    }
}

const ORDERS: &str = "127.0.0.3:5432";
const STATS: &str = "127.0.0.4:5432";

fn orders_session(policy: &Policy, uid: u32) -> SessionRules {
    policy.session_rules(&flow(ORDERS, uid, "psql"), "orders-db")
}

fn table(schema: Option<&str>, name: &str, access: Access) -> TableRef {
    TableRef {
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
        access,
    }
}

fn statement(class: StatementClass, flags: Vec<Flag>, tables: Vec<TableRef>) -> Statement {
    Statement {
        class,
        flags,
        tables,
        functions: Vec::new(),
        command: "TEST",
        prepared: None,
        sets_search_path: false,
        current_of: Vec::new(),
        computed_setting: false,
    }
}

fn select(tables: Vec<TableRef>) -> Statement {
    statement(StatementClass::Read, Vec::new(), tables)
}

fn verdict_rule_reason(d: &StatementDecision) -> (StatementVerdict, &str, &str) {
    (d.verdict, &d.rule, &d.reason)
}

// ---- loading ----

#[test]
fn the_postgres_example_loads_with_every_value() {
    let files = Files::new();
    let generated = rcgen::generate_simple_self_signed(vec!["db.internal".into()]).expect("cert");
    let ca = files.write("orders-ca.pem", &generated.cert.pem());
    let key = secret(&files, "keys/masking.key", &"k".repeat(32), 0o600);
    let extra = format!(
        r#"[daemon]
masking_key_file = "{}"
copy_out_masked = "deny"

[[target]]
name = "tls-db"
addresses = ["10.9.0.1"]
ports = [5432]
protocol = "postgres"
[target.postgres]
tls = "verify-full"
ca_file = "orders-ca.pem"
server_name = "db.internal"
max_message_bytes = 1073741824
[target.postgres.credentials.app_ro]
password_file = "secrets/orders-app_ro"

{SPEC_RULE}
[[masking]]
name = "customer-emails"
targets = ["orders-db"]
columns = ["public.customers.email"]
strategy = "partial"
keep = 2

[[masking]]
name = "ssn-everywhere"
targets = ["*"]
names = ["*ssn*"]
strategy = "hash"

[[masking]]
name = "detect"
targets = ["stats-db", "orders-db"]
detectors = ["email", "card_number", "us_ssn", "jwt", "api_token"]
"#,
        key.display()
    );
    let policy = policy(&files, &extra);
    assert_eq!(
        policy.summary(),
        "4 targets, 1 rule, 3 masking rules from 1 file"
    );
    assert_eq!(policy.copy_out_masked(), CopyOutMasked::Deny);
    assert_eq!(
        policy.daemon().masking_key_file.as_deref(),
        Some(key.as_path())
    );

    let orders = policy
        .postgres_target("orders-db")
        .expect("postgres target");
    assert_eq!(&*orders.name, "orders-db");
    assert_eq!(orders.upstream, Some("127.0.0.1:54321".parse().unwrap()));
    assert_eq!(orders.tls, UpstreamTls::Disable);
    assert_eq!(orders.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(
        orders.credentials.keys().collect::<Vec<_>>(),
        ["app_ro", "app_rw"]
    );
    assert_eq!(
        orders.credentials["app_rw"].read_password().expect("read"),
        "rw-password",
        "one trailing newline is not part of the password"
    );
    assert_eq!(
        orders.credentials["app_ro"].read_password().expect("read"),
        "ro-password"
    );
    let stats = policy.postgres_target("stats-db").expect("postgres target");
    assert_eq!(
        (stats.tls.clone(), stats.max_message_bytes),
        (UpstreamTls::Require, 1024)
    );
    assert_eq!(stats.upstream, None);
    // Relative paths are relative to the policy file, not the working directory.
    let tls = policy.postgres_target("tls-db").expect("postgres target");
    assert_eq!(
        tls.tls,
        UpstreamTls::VerifyFull {
            ca_file: ca,
            server_name: Some("db.internal".to_owned())
        }
    );
    assert_eq!(
        tls.credentials["app_ro"].password_file,
        files.path("secrets/orders-app_ro")
    );
    assert_eq!(tls.max_message_bytes, 1 << 30);
    assert!(policy.postgres_target("web").is_none(), "a tcp target");
    assert!(policy.postgres_target("nope").is_none());

    let masking = policy.masking_for("orders-db");
    assert_eq!(masking.columns.len(), 1);
    assert!(masking.columns[0].matches("public", "customers", "email"));
    assert_eq!(
        masking.columns[0].strategy,
        Strategy::Partial { keep_last: 2 }
    );
    assert_eq!(&*masking.columns[0].name, "customer-emails");
    assert_eq!(masking.names.len(), 1);
    assert_eq!(masking.names[0].strategy, Strategy::Hash);
    assert_eq!(masking.detectors.len(), 5);
    assert!(
        masking
            .detectors
            .iter()
            .all(|d| d.strategy == Strategy::Redact),
        "redact is the default strategy"
    );
    assert_eq!(&*masking.hash_key, "k".repeat(32).as_bytes());
    assert!(masking.validate().is_ok());
    let stats_masking = policy.masking_for("stats-db");
    assert_eq!(
        (
            stats_masking.columns.len(),
            stats_masking.names.len(),
            stats_masking.detectors.len()
        ),
        (0, 1, 5)
    );
    let tls_masking = policy.masking_for("tls-db");
    assert_eq!(
        (
            tls_masking.columns.len(),
            tls_masking.names.len(),
            tls_masking.detectors.len()
        ),
        (0, 1, 0),
        "\"*\" applies to every postgres target"
    );
    assert!(policy.masking_for("web").is_empty());
    assert!(policy.masking_for("nope").is_empty());
}

#[test]
fn defaults_without_daemon_settings() {
    let files = Files::new();
    let policy = policy(&files, "");
    assert_eq!(policy.copy_out_masked(), CopyOutMasked::Mask);
    assert_eq!(policy.daemon().masking_key_file, None);
    assert!(policy.masking_for("orders-db").is_empty());
    assert_eq!(policy.summary(), "3 targets, 0 rules from 1 file");
}

#[test]
fn unknown_class_and_flag_names_list_the_valid_ones() {
    let files = Files::new();
    let rule = r#"[[rule]]
name = "r"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
allow = ["reed", "drop"]
deny = ["ddl", "dorp"]
approve = ["truncat"]
[[rule.postgres.tables]]
tables = ["billing.*"]
deny = ["update"]
"#;
    let text = with_targets(&files, rule);
    let all = errors(load_one(&files, &text));
    let found: Vec<(usize, usize)> = all.iter().map(position).collect();
    assert_eq!(
        found,
        vec![
            at(&text, "\"reed\""),
            at(&text, "\"drop\""),
            at(&text, "\"dorp\""),
            at(&text, "\"truncat\""),
            at(&text, "\"update\""),
        ],
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        "unknown statement class \"reed\"; valid classes: read, write, ddl, dcl, admin, transaction, other"
    );
    assert!(
        all[1]
            .message
            .starts_with("\"drop\" is a flag, and flags can only be denied or need approval"),
        "{}",
        all[1].message
    );
    assert_eq!(
        all[2].message,
        "unknown statement class or flag \"dorp\"; valid classes: read, write, ddl, dcl, admin, transaction, other; valid flags: delete_without_where, update_without_where, drop, truncate, data_modifying_cte, procedural_code, explain_analyze_write, copy_program, copy_file, dangerous_function, set_role"
    );
    assert!(all[3].message.contains("\"truncat\""), "{}", all[3].message);
    assert_eq!(
        all[4].message,
        "unknown table access \"update\"; valid accesses: read, write"
    );
}

#[test]
fn a_role_without_credentials_is_an_error_at_the_role() {
    let files = Files::new();
    let rule = r#"[[rule]]
name = "r"
action = "allow"
targets = ["orders-db", "stats-db", "web"]
[rule.postgres]
roles = ["app_ro", "app_rw", "postgres"]
"#;
    let text = with_targets(&files, rule);
    let all = errors(load_one(&files, &text));
    let found: Vec<(usize, usize)> = all.iter().map(position).collect();
    assert_eq!(
        found,
        vec![
            at(&text, "\"app_rw\", \"postgres\""),
            at(&text, "\"postgres\"]")
        ],
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        "role \"app_rw\" has no credentials in target \"stats-db\": add [target.postgres.credentials.app_rw] with password_file = \"...\" there, or remove it from roles (roles with credentials: stats-db: app_ro)"
    );
    assert!(
        all[1].message.starts_with(
            "role \"postgres\" has no credentials in targets \"orders-db\", \"stats-db\""
        ),
        "{}",
        all[1].message
    );
    let e = only_error(load_one(
        &files,
        &with_targets(
            &files,
            "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\nroles = []\n",
        ),
    ));
    assert!(e.message.starts_with("roles is empty"), "{}", e.message);
}

#[test]
fn a_postgres_section_on_a_tcp_target_is_an_error() {
    let files = Files::new();
    let text = r#"[[target]]
name = "plain"
addresses = ["10.0.0.1"]
ports = [5432]

[target.postgres]
tls = "require"

[[target]]
name = "said-tcp"
addresses = ["10.0.0.2"]
ports = [5432]
protocol = "tcp"
[target.postgres]

[[target]]
name = "no-section"
addresses = ["10.0.0.3"]
ports = [5432]
protocol = "postgres"
"#;
    let all = errors(load_one(&files, text));
    let found: Vec<(usize, usize)> = all.iter().map(position).collect();
    assert_eq!(
        found,
        vec![(6, 1), (14, 1), at(text, "\"postgres\"\n")],
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        "[target.postgres] needs protocol = \"postgres\" in target \"plain\" (its protocol is tcp): add protocol = \"postgres\", or remove this section"
    );
    assert!(
        all[2].message.starts_with(
            "target \"no-section\" has protocol = \"postgres\" but no [target.postgres]"
        ),
        "{}",
        all[2].message
    );
}

#[test]
fn secret_files_must_be_private_regular_and_non_empty() {
    let files = Files::new();
    let open = secret(&files, "open", "pw", 0o644);
    let group = secret(&files, "group", "pw", 0o620);
    let empty = secret(&files, "empty", "\n", 0o600);
    let nul = secret(&files, "nul", "pw\0rest", 0o600);
    fs::create_dir_all(files.path("dir")).expect("mkdir");
    let text = format!(
        r#"[[target]]
name = "db"
addresses = ["10.0.0.1"]
ports = [5432]
protocol = "postgres"
[target.postgres]
[target.postgres.credentials.a]
password_file = "{}"
[target.postgres.credentials.b]
password_file = "{}"
[target.postgres.credentials.c]
password_file = "{}"
[target.postgres.credentials.d]
password_file = "missing"
[target.postgres.credentials.e]
password_file = "dir"
[target.postgres.credentials.f]
[target.postgres.credentials.g]
password_file = "{}"
"#,
        open.display(),
        group.display(),
        empty.display(),
        nul.display()
    );
    let all = errors(load_one(&files, &text));
    let found: Vec<(usize, usize)> = all.iter().map(position).collect();
    assert_eq!(
        found,
        vec![
            (8, 17),
            (10, 17),
            (12, 17),
            (14, 17),
            (16, 17),
            (17, 1),
            (19, 17)
        ],
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        format!(
            "password_file {0} is readable or writable by group or others (mode 0644): run chmod 600 {0}",
            open.display()
        )
    );
    assert!(
        all[1].message.contains("(mode 0620): run chmod 600"),
        "{}",
        all[1].message
    );
    assert!(
        all[2]
            .message
            .ends_with("is empty: write the secret into it (one line)"),
        "{}",
        all[2].message
    );
    assert_eq!(
        all[3].message,
        format!(
            "password_file {} does not exist: create it with the secret, then chmod 600 it",
            files.path("missing").display()
        )
    );
    assert!(
        all[4].message.contains("is not a regular file"),
        "{}",
        all[4].message
    );
    assert!(
        all[5]
            .message
            .starts_with("credentials for role \"f\" have no password_file"),
        "{}",
        all[5].message
    );
    assert_eq!(
        all[6].message,
        format!(
            "password_file {} is not a text password (it is not UTF-8, or holds a NUL byte): write the password as one line of text",
            nul.display()
        )
    );
}

#[test]
fn a_secret_owned_by_someone_else_is_refused() {
    let files = Files::new();
    let theirs = secret(&files, "theirs", "pw", 0o600);
    // Only root can give a file away; elsewhere there is nothing to test.
    if std::os::unix::fs::chown(&theirs, Some(4242), None).is_err() {
        return;
    }
    let text = format!(
        "[[target]]\nname = \"db\"\naddresses = [\"10.0.0.1\"]\nports = [5432]\nprotocol = \"postgres\"\n[target.postgres]\n[target.postgres.credentials.a]\npassword_file = \"{}\"\n",
        theirs.display()
    );
    let e = only_error(load_one(&files, &text));
    assert_eq!(position(&e), (8, 17));
    assert_eq!(
        e.message,
        format!(
            "password_file {0} is owned by uid 4242, who could read or replace the secret: run chown root {0} (or chown it to the gateway's user)",
            theirs.display()
        )
    );
}

#[test]
fn ca_file_must_hold_certificates() {
    let files = Files::new();
    let pw = secret(&files, "pw", "pw", 0o600);
    files.write(
        "key-not-cert.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let text = format!(
        "[[target]]\nname = \"db\"\naddresses = [\"10.0.0.1\"]\nports = [5432]\nprotocol = \"postgres\"\n[target.postgres]\ntls = \"verify-full\"\nca_file = \"key-not-cert.pem\"\nclient_tls = true\n[target.postgres.credentials.app]\npassword_file = \"{}\"\n",
        pw.display()
    );
    let e = only_error(load_one(&files, &text));
    assert_eq!(position(&e), at(&text, "\"key-not-cert.pem\""));
    assert!(
        e.message.contains("holds no PEM certificate"),
        "{}",
        e.message
    );
}

#[test]
fn tls_settings_are_checked() {
    let files = Files::new();
    let pw = secret(&files, "pw", "pw", 0o600);
    let target = |name: &str, body: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\naddresses = [\"10.0.0.1\"]\nports = [5432]\nprotocol = \"postgres\"\n[target.postgres]\n{body}[target.postgres.credentials.app]\npassword_file = \"{}\"\n\n",
            pw.display()
        )
    };
    let text = [
        target("no-ca", "tls = \"verify-full\"\n"),
        target(
            "missing-ca",
            "tls = \"verify-full\"\nca_file = \"nope.pem\"\n",
        ),
        target(
            "ca-without-verify",
            "tls = \"require\"\nca_file = \"nope.pem\"\nserver_name = \"db\"\n",
        ),
        target("bad-mode", "tls = \"verify-ca\"\n"),
        target(
            "bad-values",
            "upstream = \"db.internal:5432\"\nmax_message_bytes = 1023\nclient_tls_cert = \"x\"\n",
        ),
        target("bad-size", "max_message_bytes = 1073741825\n"),
    ]
    .concat();
    let all = errors(load_one(&files, &text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(all.len(), 7, "{all:#?}");
    assert_eq!(position(&all[0]), at(&text, "\"verify-full\"\n["));
    assert!(
        messages[0].starts_with("tls = \"verify-full\" needs ca_file = "),
        "{}",
        messages[0]
    );
    assert_eq!(position(&all[1]), at(&text, "\"nope.pem\""));
    assert!(messages[1].contains("does not exist"), "{}", messages[1]);
    assert!(
        messages[2]
            .starts_with("ca_file is only used with tls = \"verify-full\" (tls is \"require\")"),
        "{}",
        messages[2]
    );
    assert!(
        messages[3].starts_with("server_name is only used with"),
        "{}",
        messages[3]
    );
    assert_eq!(
        messages[4],
        "tls must be \"disable\", \"require\" or \"verify-full\", not \"verify-ca\""
    );
    // A type or unknown-key error stops the entry: client certificates are
    // not supported yet.
    assert_eq!(position(&all[5]), at(&text, "client_tls_cert"));
    assert!(
        messages[5].contains("unknown field `client_tls_cert`"),
        "{}",
        messages[5]
    );
    assert!(
        messages[6].starts_with(
            "max_message_bytes must be 1024 (1 KiB) to 1073741824 (1 GiB), not 1073741825"
        ),
        "{}",
        messages[6]
    );

    let text = target(
        "bad-upstream",
        "upstream = \"db.internal:5432\"\nmax_message_bytes = 1023\n",
    );
    let all = errors(load_one(&files, &text));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0].message.contains("is not an IP address and port"),
        "{}",
        all[0].message
    );
    assert!(all[1].message.contains("not 1023"), "{}", all[1].message);
}

#[test]
fn a_postgres_target_needs_credentials() {
    let files = Files::new();
    let text = "[[target]]\nname = \"db\"\naddresses = [\"10.0.0.1\"]\nports = [5432]\nprotocol = \"postgres\"\n[target.postgres]\ntls = \"disable\"\n";
    let e = only_error(load_one(&files, text));
    assert_eq!(position(&e), (6, 1));
    assert!(e.message.contains("has no credentials"), "{}", e.message);
}

#[test]
fn rule_postgres_sections_are_only_for_allow_rules_on_postgres_targets() {
    let files = Files::new();
    let rules = r#"[[rule]]
name = "deny-with-section"
action = "deny"
targets = ["orders-db"]
[rule.postgres]
deny = ["ddl"]

[[rule]]
name = "tcp-only"
action = "allow"
targets = ["web", "*"]
[rule.postgres]
allow = ["read"]

[[rule]]
name = "broken-target"
action = "allow"
targets = ["nope"]
[rule.postgres]
allow = ["read"]

[[rule]]
name = "contradiction"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
deny = ["drop"]
approve = ["drop", "truncate"]
[[rule.postgres.tables]]
tables = ["a.b.c", "billing.", "x"]
[[rule.postgres.tables]]
approve = ["read"]
"#;
    let text = with_targets(&files, rules);
    let all = errors(load_one(&files, &text));
    let found: Vec<(usize, usize)> = all.iter().map(position).collect();
    let header = |n: usize| {
        let offset = text
            .match_indices("[rule.postgres]\n")
            .nth(n)
            .expect("header")
            .0;
        at(&text, &text[offset..])
    };
    assert_eq!(
        found,
        vec![
            header(0),
            header(1),
            at(&text, "\"nope\""),
            at(&text, "\"drop\", \"truncate\""),
            at(&text, "\"a.b.c\""),
            at(&text, "\"billing.\""),
            at(&text, "[[rule.postgres.tables]]\napprove"),
        ],
        "{all:#?}"
    );
    assert!(
        all[0]
            .message
            .starts_with("[rule.postgres] is only valid in allow rules"),
        "{}",
        all[0].message
    );
    assert!(
        all[1].message.starts_with(
            "[rule.postgres] applies to postgres targets, and rule \"tcp-only\" names none"
        ),
        "{}",
        all[1].message
    );
    assert!(
        all[2].message.starts_with("unknown target \"nope\""),
        "{}",
        all[2].message
    );
    assert!(
        all[3].message.contains("in both deny and approve"),
        "{}",
        all[3].message
    );
    assert!(
        all[4].message.contains("more than one dot"),
        "{}",
        all[4].message
    );
    assert!(all[5].message.contains("empty part"), "{}", all[5].message);
    assert!(
        all[6].message.contains("has no tables"),
        "{}",
        all[6].message
    );

    let e = only_error(load_one(
        &files,
        &with_targets(
            &files,
            "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\n[[rule.postgres.tables]]\ntables = [\"x\"]\n",
        ),
    ));
    assert!(
        e.message.contains("neither denies nor needs approval"),
        "{}",
        e.message
    );
    let e = only_error(load_one(
        &files,
        &with_targets(
            &files,
            "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\nrole = [\"app_ro\"]\n",
        ),
    ));
    assert!(e.message.contains("unknown field `role`"), "{}", e.message);
}

#[test]
fn masking_entries_use_exactly_one_matcher() {
    let files = Files::new();
    let masking = r#"[[masking]]
name = "two"
targets = ["orders-db"]
columns = ["customers.email"]
names = ["*email*"]
detectors = ["email"]

[[masking]]
name = "none"
targets = ["orders-db"]

[[masking]]
name = "bad-items"
targets = ["orders-db", "web", "nope"]
detectors = ["email", "iban"]

[[masking]]
name = "bad-columns"
targets = ["*"]
columns = ["a.b.c.d", "public..x", "[x.y"]

[[masking]]
name = "bad-names"
targets = ["*"]
names = []

[[masking]]
name = "two"
targets = ["*"]
names = ["x"]
strategy = "scramble"
"#;
    let text = with_targets(&files, masking);
    let all = errors(load_one(&files, &text));
    let found: Vec<(usize, usize)> = all.iter().map(position).collect();
    let second_two = text.rfind("name = \"two\"").expect("second") + "name = ".len();
    let second_two = at(&text, &text[second_two..]);
    assert_eq!(
        found,
        vec![
            at(&text, "[\"*email*\"]"),
            at(&text, "[\"email\"]\n\n"),
            at(&text, "[[masking]]\nname = \"none\""),
            at(&text, "\"web\", \"nope\""),
            at(&text, "\"nope\""),
            at(&text, "\"iban\""),
            at(&text, "\"a.b.c.d\""),
            at(&text, "\"public..x\""),
            at(&text, "\"[x.y\""),
            at(&text, "[]"),
            second_two,
            at(&text, "\"scramble\""),
        ],
        "{all:#?}"
    );
    assert_eq!(
        all[0].message,
        "masking \"two\" has both columns and names: use exactly one of columns, names and detectors per [[masking]]; write a second [[masking]] for names"
    );
    assert!(
        all[1].message.contains("has both columns and detectors"),
        "{}",
        all[1].message
    );
    assert!(
        all[2].message.starts_with("masking \"none\" masks nothing"),
        "{}",
        all[2].message
    );
    assert!(
        all[3]
            .message
            .starts_with("target \"web\" is not a postgres target")
            && all[3]
                .message
                .ends_with("postgres targets: orders-db, stats-db"),
        "{}",
        all[3].message
    );
    assert_eq!(
        all[4].message,
        "unknown target \"nope\"; postgres targets: orders-db, stats-db"
    );
    assert!(
        all[5].message.contains("unknown detector `iban`"),
        "{}",
        all[5].message
    );
    assert!(all[6].message.contains("a.b.c.d"), "{}", all[6].message);
    assert!(all[7].message.contains("empty"), "{}", all[7].message);
    assert!(all[8].message.contains("`[x.y`"), "{}", all[8].message);
    assert!(
        all[9].message.starts_with("names is empty"),
        "{}",
        all[9].message
    );
    assert!(
        all[10].message.contains("already defined at"),
        "{}",
        all[10].message
    );
    assert_eq!(
        all[11].message,
        "strategy must be \"redact\", \"partial\" or \"hash\", not \"scramble\""
    );
}

#[test]
fn hash_masking_needs_a_private_key_file() {
    let files = Files::new();
    let hashed =
        "[[masking]]\nname = \"h\"\ntargets = [\"*\"]\nnames = [\"*ssn*\"]\nstrategy = \"hash\"\n";
    let text = with_targets(&files, hashed);
    let e = only_error(load_one(&files, &text));
    assert_eq!(position(&e), at(&text, "\"hash\""));
    assert_eq!(
        e.message,
        "hash masking needs daemon.masking_key_file: add masking_key_file = \"/var/lib/chokepoint/keys/masking.key\" to [daemon], made with head -c 32 /dev/urandom and chmod 600"
    );

    let open = secret(&files, "open.key", &"k".repeat(32), 0o644);
    let text = with_targets(
        &files,
        &format!(
            "[daemon]\nmasking_key_file = \"{}\"\n\n{hashed}",
            open.display()
        ),
    );
    let e = only_error(load_one(&files, &text));
    assert_eq!(position(&e), at(&text, &format!("\"{}\"", open.display())));
    assert!(e.message.contains("run chmod 600"), "{}", e.message);

    let short = secret(&files, "short.key", "short", 0o600);
    let text = format!("[daemon]\nmasking_key_file = \"{}\"\n", short.display());
    let e = only_error(load_one(&files, &text));
    assert!(
        e.message
            .contains("holds 5 bytes; a hash key needs at least 16"),
        "{}",
        e.message
    );

    let text = with_targets(
        &files,
        "[[masking]]\nname = \"p\"\ntargets = [\"*\"]\nnames = [\"x\"]\nstrategy = \"redact\"\nkeep = 2\n\n[[masking]]\nname = \"q\"\ntargets = [\"*\"]\nnames = [\"x\"]\nstrategy = \"partial\"\nkeep = 0\n",
    );
    let all = errors(load_one(&files, &text));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0]
            .message
            .starts_with("keep is only used with strategy = \"partial\""),
        "{}",
        all[0].message
    );
    assert!(
        all[1].message.starts_with("keep must be 1 to 64"),
        "{}",
        all[1].message
    );
}

#[test]
fn copy_out_masked_is_mask_or_deny() {
    let files = Files::new();
    let e = only_error(load_one(&files, "[daemon]\ncopy_out_masked = \"allow\"\n"));
    assert_eq!(position(&e), (2, 19));
    assert_eq!(
        e.message,
        "copy_out_masked must be \"mask\" or \"deny\", not \"allow\""
    );
}

#[test]
fn unknown_sections_name_masking_among_the_valid_ones() {
    let files = Files::new();
    let e = only_error(load_one(&files, "[masks]\n"));
    assert!(
        e.message.ends_with(
            "valid sections are [daemon], [guard], [recording], [approvals], [identity], [dns], [[target]], [[rule]] and [[masking]]"
        ),
        "{}",
        e.message
    );
}

// ---- flows to postgres targets ----

#[test]
fn a_postgres_target_named_by_hosts_stays_mediated_behind_a_broader_rule() {
    let files = Files::new();
    let pw = secret(&files, "secrets/orders-app_rw", "pw", 0o600);
    let text = format!(
        r#"
[[target]]
name = "orders-db"
hosts = ["db.internal"]
ports = [5432]
protocol = "postgres"
[target.postgres]
upstream = "127.0.0.1:5432"
[target.postgres.credentials.app_rw]
password_file = "{}"

[[rule]]
name = "egress"
action = "allow"
targets = ["*"]
"#,
        pw.display()
    );
    let policy = load_one(&files, &text).expect("loads");
    let decide = |names: &[&str]| {
        let names: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        let mut f = flow("127.0.0.9:5432", 1000, "psql");
        f.names = &names;
        let d = policy.evaluate(&f);
        (
            d.rule_name().to_owned(),
            d.target.as_deref().map(str::to_owned),
            d.protocol,
        )
    };
    let mediated = (
        "egress".to_owned(),
        Some("orders-db".to_owned()),
        Protocol::Postgres,
    );
    assert_eq!(decide(&["db.internal"]), mediated);
    // A second name of the same address makes it ambiguous for allowing,
    // never a plain pipe around the database.
    assert_eq!(decide(&["db.internal", "db-primary.internal"]), mediated);
    assert_eq!(decide(&["db-primary.internal", "db.internal"]), mediated);
}

#[test]
fn decisions_name_the_protocol_of_the_destination() {
    let files = Files::new();
    let policy = policy(
        &files,
        "[[rule]]\nname = \"root-anywhere\"\naction = \"allow\"\ntargets = [\"*\"]\nuids = [0]\n\n[[rule]]\nname = \"web-for-all\"\naction = \"allow\"\ntargets = [\"web\"]\n",
    );
    // "*" and an overlapping tcp target cannot turn the database into a
    // plain pipe: the destination is in a postgres target.
    for uid in [0, 1000] {
        let d = policy.evaluate(&flow(ORDERS, uid, "psql"));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(
            (d.target.as_deref(), d.protocol),
            (Some("orders-db"), Protocol::Postgres),
            "uid {uid}"
        );
    }
    let d = policy.evaluate(&flow("127.0.0.9:80", 1000, "curl"));
    assert_eq!(
        (d.rule_name(), d.target.as_deref(), d.protocol),
        ("web-for-all", Some("web"), Protocol::Tcp)
    );
    let d = policy.evaluate(&flow("10.0.0.1:80", 0, "curl"));
    assert_eq!((d.target.as_deref(), d.protocol), (None, Protocol::Tcp));
    // A denied flow to a database is refused in its protocol, even by default.
    let empty = Files::new();
    let bare = self::policy(&empty, "");
    let d = bare.evaluate(&flow(ORDERS, 1000, "psql"));
    assert_eq!(
        (d.verdict, d.rule_name(), d.target.as_deref(), d.protocol),
        (
            Verdict::Deny,
            DEFAULT_DENY,
            Some("orders-db"),
            Protocol::Postgres
        )
    );
}

#[test]
fn session_rules_are_the_matching_allow_rules_for_the_target() {
    let files = Files::new();
    let rules = r#"[[rule]]
name = "for-runner"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
[rule.postgres]
roles = ["app_ro"]

[[rule]]
name = "for-deploy"
action = "allow"
targets = ["orders-db"]
users = ["deploy"]

[[rule]]
name = "stats-only"
action = "allow"
targets = ["stats-db"]

[[rule]]
name = "anything-for-curl"
action = "allow"
targets = ["*"]
processes = ["curl"]

[[rule]]
name = "no-root"
action = "deny"
targets = ["*"]
uids = [0]
"#;
    let policy = policy(&files, rules);
    let names = |s: &SessionRules| s.rule_names().map(str::to_owned).collect::<Vec<_>>();
    let runner = orders_session(&policy, 1000);
    assert_eq!(names(&runner), ["for-runner"]);
    assert_eq!(runner.target(), "orders-db");
    assert_eq!(names(&orders_session(&policy, 1001)), ["for-deploy"]);
    let curl = policy.session_rules(&flow(ORDERS, 1000, "curl"), "orders-db");
    assert_eq!(names(&curl), ["for-runner", "anything-for-curl"]);
    let stats = policy.session_rules(&flow(STATS, 1000, "psql"), "stats-db");
    assert_eq!(names(&stats), ["stats-only"]);
    // The destination must be in the target the rule names.
    assert!(
        policy
            .session_rules(&flow(STATS, 1000, "psql"), "orders-db")
            .is_empty()
    );
    assert!(
        orders_session(&policy, 0).is_empty(),
        "deny rules give nothing"
    );
    assert!(
        policy
            .session_rules(&flow(ORDERS, 1000, "psql"), "nope")
            .is_empty()
    );
}

#[test]
fn authorize_role_names_the_rule_or_the_allowed_roles() {
    let files = Files::new();
    let rules = r#"[[rule]]
name = "ro"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
[rule.postgres]
roles = ["app_ro"]
allow = ["read"]

[[rule]]
name = "rw"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
processes = ["migrate"]
[rule.postgres]
roles = ["app_rw"]
allow = ["read", "write"]

[[rule]]
name = "stats-anything"
action = "allow"
targets = ["*"]
uids = [1001]
"#;
    let policy = policy(&files, rules);
    let psql = orders_session(&policy, 1000);
    assert_eq!(psql.authorize_role("app_ro").as_deref(), Ok("ro"));
    assert_eq!(
        psql.authorize_role("postgres"),
        Err("role \"postgres\" is not allowed for this job on target orders-db; allowed roles: app_ro".to_owned())
    );
    assert_eq!(
        psql.authorize_role("app_rw"),
        Err("role \"app_rw\" is not allowed for this job on target orders-db; allowed roles: app_ro".to_owned())
    );
    let migrate = policy.session_rules(&flow(ORDERS, 1000, "migrate"), "orders-db");
    assert_eq!(migrate.authorize_role("app_rw").as_deref(), Ok("rw"));
    assert_eq!(migrate.allowed_roles(), ["app_ro", "app_rw"]);

    // A rule without [rule.postgres] allows every role with credentials in
    // the session's target, and only those.
    let deploy = policy.session_rules(&flow(STATS, 1001, "psql"), "stats-db");
    assert_eq!(
        deploy.authorize_role("app_ro").as_deref(),
        Ok("stats-anything")
    );
    assert_eq!(
        deploy.authorize_role("app_rw"),
        Err(
            "role \"app_rw\" is not allowed for this job on target stats-db; allowed roles: app_ro"
                .to_owned()
        )
    );
    let nobody = orders_session(&policy, 4242);
    assert_eq!(
        nobody.authorize_role("app_ro"),
        Err(
            "role \"app_ro\" is not allowed for this job on target orders-db; allowed roles: none"
                .to_owned()
        )
    );

    // Narrowed to its role, a session cannot borrow another role's rule.
    let as_ro = migrate.for_role("app_ro").expect("app_ro is allowed");
    let insert = statement(StatementClass::Write, Vec::new(), Vec::new());
    assert_eq!(
        migrate.decide(&insert, &default_path()).verdict,
        StatementVerdict::Allow
    );
    assert_eq!(
        as_ro.decide(&insert, &default_path()).verdict,
        StatementVerdict::Deny
    );
    assert!(psql.for_role("app_rw").is_err());
}

// ---- statement decisions ----

#[test]
fn a_statement_is_allowed_by_its_class() {
    let files = Files::new();
    let policy = policy(&files, SPEC_RULE);
    let session = orders_session(&policy, 1000);
    let d = session.decide(
        &select(vec![table(None, "orders", Access::Read)]),
        &default_path(),
    );
    assert_eq!(
        verdict_rule_reason(&d),
        (
            StatementVerdict::Allow,
            "ci-reads-orders",
            "statement class read is allowed"
        )
    );
    assert_eq!(d.statement_index, 0);
    assert_eq!(
        d.to_string(),
        "allow by rule ci-reads-orders: statement class read is allowed"
    );
    let d = session.decide(
        &statement(StatementClass::Dcl, Vec::new(), Vec::new()),
        &default_path(),
    );
    assert_eq!(
        verdict_rule_reason(&d),
        (
            StatementVerdict::Deny,
            DEFAULT_DENY,
            "statement class dcl is not allowed by rule ci-reads-orders"
        )
    );
}

#[test]
fn a_denied_flag_overrides_an_allowed_class() {
    let files = Files::new();
    let policy = policy(&files, SPEC_RULE);
    let session = orders_session(&policy, 1000);
    let delete_all = statement(
        StatementClass::Write,
        vec![Flag::DeleteWithoutWhere],
        vec![table(None, "orders", Access::Write)],
    );
    assert_eq!(
        verdict_rule_reason(&session.decide(&delete_all, &default_path())),
        (
            StatementVerdict::Deny,
            "ci-reads-orders",
            "flag delete_without_where is denied"
        )
    );
    let drop = statement(StatementClass::Ddl, vec![Flag::Drop], Vec::new());
    assert_eq!(
        session.decide(&drop, &default_path()).reason,
        "statement class ddl is denied",
        "the class is named first"
    );
    // A flag nobody lists changes nothing.
    let cte = statement(
        StatementClass::Write,
        vec![Flag::DataModifyingCte],
        Vec::new(),
    );
    assert_eq!(
        session.decide(&cte, &default_path()).verdict,
        StatementVerdict::Allow
    );
}

#[test]
fn a_table_rule_denies_writes_to_billing_but_not_reads() {
    let files = Files::new();
    let policy = policy(&files, SPEC_RULE);
    let session = orders_session(&policy, 1000);
    let read = select(vec![table(Some("billing"), "invoices", Access::Read)]);
    assert_eq!(
        session.decide(&read, &default_path()).verdict,
        StatementVerdict::Allow
    );
    let write = statement(
        StatementClass::Write,
        Vec::new(),
        vec![
            table(None, "orders", Access::Read),
            table(Some("billing"), "invoices", Access::Write),
        ],
    );
    assert_eq!(
        verdict_rule_reason(&session.decide(&write, &default_path())),
        (
            StatementVerdict::Deny,
            "ci-reads-orders",
            "write access to billing.invoices is denied (tables \"billing.*\")"
        )
    );
    // An unqualified name is in the schemas of the default path only.
    let public = statement(
        StatementClass::Write,
        Vec::new(),
        vec![table(None, "invoices", Access::Write)],
    );
    assert_eq!(
        session.decide(&public, &default_path()).verdict,
        StatementVerdict::Allow
    );
    let bare = Files::new();
    let policy = self::policy(
        &bare,
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\n[[rule.postgres.tables]]\ntables = [\"secrets\", \"audit_*.log?\"]\ndeny = [\"read\", \"write\"]\n",
    );
    let session = orders_session(&policy, 1000);
    for (schema, name, verdict) in [
        (None, "secrets", StatementVerdict::Deny),
        (Some("public"), "secrets", StatementVerdict::Deny),
        (Some("other"), "secrets", StatementVerdict::Allow),
        (Some("audit_2024"), "log1", StatementVerdict::Deny),
        (Some("audit_2024"), "logs", StatementVerdict::Deny),
        (Some("audit_2024"), "log", StatementVerdict::Allow),
        (Some("PUBLIC"), "Secrets", StatementVerdict::Deny),
    ] {
        let d = session.decide(
            &select(vec![table(schema, name, Access::Read)]),
            &default_path(),
        );
        assert_eq!(d.verdict, verdict, "{schema:?}.{name}: {}", d.reason);
    }
}

/// `ALTER ROLE app_rw SET search_path = billing, public`: the server finds
/// `invoices` in billing, and so must the table rule.
#[test]
fn an_unqualified_name_is_in_every_schema_of_the_search_path() {
    let files = Files::new();
    let policy = policy(&files, SPEC_RULE);
    let session = orders_session(&policy, 1000);
    let billing = SearchPath::parse("billing, public", "app_rw").unwrap();
    let delete = |schema| {
        statement(
            StatementClass::Write,
            Vec::new(),
            vec![table(schema, "invoices", Access::Write)],
        )
    };
    assert_eq!(
        verdict_rule_reason(&session.decide(&delete(None), &billing)),
        (
            StatementVerdict::Deny,
            "ci-reads-orders",
            "write access to invoices (billing.invoices on the search_path) is denied (tables \"billing.*\")"
        )
    );
    // Reads stay allowed, and a qualified name is matched as written.
    let read = select(vec![table(None, "invoices", Access::Read)]);
    assert_eq!(
        session.decide(&read, &billing).verdict,
        StatementVerdict::Allow
    );
    assert_eq!(
        session.decide(&delete(Some("public")), &billing).verdict,
        StatementVerdict::Allow
    );
    // Later in the path counts as much as first: the name may only exist there.
    let last = SearchPath::parse(r#"public, "Billing""#, "app_rw").unwrap();
    assert_eq!(
        session.decide(&delete(None), &last).verdict,
        StatementVerdict::Deny
    );
    assert_eq!(
        session.decide(&delete(None), &default_path()).verdict,
        StatementVerdict::Allow
    );
}

/// `"$user"` names the role's schema even before `CREATE SCHEMA app_rw`,
/// and the temporary schema is searched whether the path names it or not.
#[test]
fn the_roles_schema_and_pg_temp_are_on_the_path() {
    let files = Files::new();
    let policy = self::policy(
        &files,
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\n[[rule.postgres.tables]]\ntables = [\"app_rw.*\", \"pg_temp.scratch\"]\ndeny = [\"write\"]\n",
    );
    let session = orders_session(&policy, 1000);
    let write = |name| {
        statement(
            StatementClass::Write,
            Vec::new(),
            vec![table(None, name, Access::Write)],
        )
    };
    let d = session.decide(&write("orders"), &default_path());
    assert_eq!(
        d.reason,
        "write access to orders (app_rw.orders on the search_path) is denied (tables \"app_rw.*\")"
    );
    let fixed = SearchPath::parse("billing, public", "app_rw").unwrap();
    assert_eq!(
        session.decide(&write("orders"), &fixed).verdict,
        StatementVerdict::Allow,
        "no \"$user\" on the path"
    );
    for path in [default_path(), fixed] {
        assert_eq!(
            session.decide(&write("scratch"), &path).verdict,
            StatementVerdict::Deny,
            "{path}"
        );
    }
    // After SET ROLE, "$user" may be any role's schema.
    let mut changed = default_path();
    changed.role_changed();
    assert_eq!(
        session.decide(&write("anything"), &changed).verdict,
        StatementVerdict::Deny
    );
}

/// A session whose search_path could not be read: an unqualified name may
/// be in any schema, so every table rule covers it.
#[test]
fn an_unknown_search_path_matches_every_schema() {
    let files = Files::new();
    let policy = policy(&files, SPEC_RULE);
    let session = orders_session(&policy, 1000);
    let unknown = SearchPath::unknown();
    let write = |schema| {
        statement(
            StatementClass::Write,
            Vec::new(),
            vec![table(schema, "orders", Access::Write)],
        )
    };
    assert_eq!(
        verdict_rule_reason(&session.decide(&write(None), &unknown)),
        (
            StatementVerdict::Deny,
            "ci-reads-orders",
            "write access to orders (any schema: the session's search_path is unknown) is denied (tables \"billing.*\")"
        )
    );
    assert_eq!(
        session.decide(&write(Some("public")), &unknown).verdict,
        StatementVerdict::Allow
    );
    let read = select(vec![table(None, "orders", Access::Read)]);
    assert_eq!(
        session.decide(&read, &unknown).verdict,
        StatementVerdict::Allow
    );
}

#[test]
fn an_unqualified_system_name_is_in_pg_catalog_too() {
    // PostgreSQL searches pg_catalog before the search path, and every
    // relation there is named pg_*: `SELECT * FROM pg_stat_activity` reads
    // pg_catalog.pg_stat_activity.
    let files = Files::new();
    let policy = self::policy(
        &files,
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\n[[rule.postgres.tables]]\ntables = [\"pg_catalog.pg_stat_activity\", \"public.pg_own\"]\ndeny = [\"read\"]\n",
    );
    let session = orders_session(&policy, 1000);
    for (schema, name, verdict) in [
        (None, "pg_stat_activity", StatementVerdict::Deny),
        (
            Some("pg_catalog"),
            "pg_stat_activity",
            StatementVerdict::Deny,
        ),
        (Some("public"), "pg_stat_activity", StatementVerdict::Allow),
        (None, "pg_own", StatementVerdict::Deny),
        (None, "stat_activity", StatementVerdict::Allow),
    ] {
        let d = session.decide(
            &select(vec![table(schema, name, Access::Read)]),
            &default_path(),
        );
        assert_eq!(d.verdict, verdict, "{schema:?}.{name}: {}", d.reason);
    }
}

#[test]
fn approval_is_asked_when_nothing_denies() {
    let files = Files::new();
    let policy = policy(
        &files,
        &format!(
            "{SPEC_RULE}[[rule.postgres.tables]]\ntables = [\"public.customers\"]\napprove = [\"read\"]\n"
        ),
    );
    let session = orders_session(&policy, 1000);
    let truncate = statement(StatementClass::Write, vec![Flag::Truncate], Vec::new());
    assert_eq!(
        verdict_rule_reason(&session.decide(&truncate, &default_path())),
        (
            StatementVerdict::Approve,
            "ci-reads-orders",
            "flag truncate needs approval"
        )
    );
    let customers = select(vec![table(None, "customers", Access::Read)]);
    assert_eq!(
        session.decide(&customers, &default_path()).reason,
        "read access to customers (public.customers on the search_path) needs approval (tables \"public.customers\")"
    );
    // Deny wins over approval.
    let both = statement(
        StatementClass::Write,
        vec![Flag::Truncate, Flag::Drop],
        Vec::new(),
    );
    assert_eq!(
        verdict_rule_reason(&session.decide(&both, &default_path())),
        (
            StatementVerdict::Deny,
            "ci-reads-orders",
            "flag drop is denied"
        )
    );
    assert_eq!(StatementVerdict::Approve.to_string(), "approve");
}

#[test]
fn a_deny_in_one_rule_wins_over_an_allow_in_another() {
    let files = Files::new();
    let rules = r#"[[rule]]
name = "broad"
action = "allow"
targets = ["orders-db"]

[[rule]]
name = "careful"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
[rule.postgres]
allow = ["read"]
deny = ["dangerous_function"]
approve = ["ddl"]

[[rule]]
name = "reads-only"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
allow = ["read"]
"#;
    let policy = policy(&files, rules);
    let session = orders_session(&policy, 1000);
    let call = statement(
        StatementClass::Read,
        vec![Flag::DangerousFunction],
        Vec::new(),
    );
    assert_eq!(
        verdict_rule_reason(&session.decide(&call, &default_path())),
        (
            StatementVerdict::Deny,
            "careful",
            "flag dangerous_function is denied"
        )
    );
    let ddl = statement(StatementClass::Ddl, Vec::new(), Vec::new());
    assert_eq!(
        verdict_rule_reason(&session.decide(&ddl, &default_path())),
        (
            StatementVerdict::Approve,
            "careful",
            "statement class ddl needs approval"
        )
    );
    // "broad" has no [rule.postgres]: everything it allows, others may still deny.
    let write = statement(StatementClass::Write, Vec::new(), Vec::new());
    assert_eq!(
        verdict_rule_reason(&session.decide(&write, &default_path())),
        (
            StatementVerdict::Allow,
            "broad",
            "statement class write is allowed"
        )
    );
    // For another user, "careful" does not apply.
    let other = orders_session(&policy, 1001);
    assert_eq!(
        other.decide(&call, &default_path()).verdict,
        StatementVerdict::Allow
    );
    assert_eq!(
        other.decide(&ddl, &default_path()).verdict,
        StatementVerdict::Allow
    );

    let only_reads = Files::new();
    let policy = self::policy(
        &only_reads,
        "[[rule]]\nname = \"a\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\nallow = [\"read\"]\n\n[[rule]]\nname = \"b\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\nallow = []\n",
    );
    let d = orders_session(&policy, 1000).decide(&ddl, &default_path());
    assert_eq!(
        verdict_rule_reason(&d),
        (
            StatementVerdict::Deny,
            DEFAULT_DENY,
            "statement class ddl is not allowed by rules a, b"
        )
    );
}

#[test]
fn without_session_rules_every_statement_is_denied() {
    let files = Files::new();
    let policy = policy(&files, "");
    let session = orders_session(&policy, 1000);
    assert!(session.is_empty());
    let d = session.decide(&select(Vec::new()), &default_path());
    assert_eq!(
        verdict_rule_reason(&d),
        (
            StatementVerdict::Deny,
            DEFAULT_DENY,
            "no rule lets this job use target orders-db"
        )
    );
    let d = session.decide_all(
        &Classification {
            statements: Vec::new(),
        },
        &default_path(),
    );
    assert_eq!(d.verdict, StatementVerdict::Deny);
}

#[test]
fn decide_all_reports_the_first_statement_that_is_not_allowed() {
    let files = Files::new();
    let policy = policy(&files, SPEC_RULE);
    let session = orders_session(&policy, 1000);
    let read = || select(vec![table(None, "orders", Access::Read)]);
    let truncate = || statement(StatementClass::Write, vec![Flag::Truncate], Vec::new());
    let ddl = || statement(StatementClass::Ddl, Vec::new(), Vec::new());
    let all = |statements: Vec<Statement>| {
        session.decide_all(&Classification { statements }, &default_path())
    };

    let d = all(vec![read(), read()]);
    assert_eq!((d.verdict, d.statement_index), (StatementVerdict::Allow, 0));
    let d = all(vec![read(), truncate(), read()]);
    assert_eq!(
        (d.verdict, d.statement_index, d.reason.as_str()),
        (StatementVerdict::Approve, 1, "flag truncate needs approval")
    );
    let d = all(vec![read(), ddl(), ddl()]);
    assert_eq!(
        (d.verdict, d.statement_index, d.reason.as_str()),
        (StatementVerdict::Deny, 1, "statement class ddl is denied")
    );
    // An approved string is sent whole, so a later denial still denies it.
    let d = all(vec![truncate(), read(), ddl()]);
    assert_eq!((d.verdict, d.statement_index), (StatementVerdict::Deny, 2));
    let d = all(Vec::new());
    assert_eq!(
        (d.verdict, d.rule.as_ref(), d.reason.as_str()),
        (
            StatementVerdict::Allow,
            "ci-reads-orders",
            "the query has no statements"
        )
    );
}

#[test]
fn what_two_rules_hold_no_single_approval_releases() {
    let files = Files::new();
    let policy = policy(
        &files,
        &format!(
            "{SPEC_RULE}\n[[rule]]\nname = \"billing-dba\"\naction = \"allow\"\ntargets = [\"orders-db\"]\n[rule.postgres]\nallow = [\"read\", \"write\"]\n[[rule.postgres.tables]]\ntables = [\"public.invoices\"]\napprove = [\"write\"]\n"
        ),
    );
    let session = orders_session(&policy, 1000);
    let truncate = || statement(StatementClass::Write, vec![Flag::Truncate], Vec::new());
    let invoices = || {
        statement(
            StatementClass::Write,
            Vec::new(),
            vec![table(Some("public"), "invoices", Access::Write)],
        )
    };
    let read = || select(vec![table(None, "orders", Access::Read)]);
    let all = |statements: Vec<Statement>| {
        session.decide_all(&Classification { statements }, &default_path())
    };
    // Each alone is held by its own rule.
    assert_eq!(
        verdict_rule_reason(&all(vec![truncate()])),
        (
            StatementVerdict::Approve,
            "ci-reads-orders",
            "flag truncate needs approval"
        )
    );
    assert_eq!(all(vec![read(), invoices()]).rule.as_ref(), "billing-dba");
    // Together in one string (sent whole once approved), or in one
    // statement: refused, naming both rules.
    let d = all(vec![truncate(), read(), invoices()]);
    assert_eq!((d.verdict, d.statement_index), (StatementVerdict::Deny, 2));
    assert!(
        d.reason.contains("rules ci-reads-orders and billing-dba"),
        "{}",
        d.reason
    );
    let both = statement(
        StatementClass::Write,
        vec![Flag::Truncate],
        vec![table(Some("public"), "invoices", Access::Write)],
    );
    let d = session.decide(&both, &default_path());
    assert_eq!(d.verdict, StatementVerdict::Deny, "{}", d.reason);
    assert!(
        d.reason.contains("one approval cannot answer for both"),
        "{}",
        d.reason
    );
    // Two statements one rule holds still make one request.
    assert_eq!(
        all(vec![truncate(), truncate()]).verdict,
        StatementVerdict::Approve
    );
}

#[test]
fn policy_names_match_the_classifier() {
    let classes = [
        StatementClass::Read,
        StatementClass::Write,
        StatementClass::Ddl,
        StatementClass::Dcl,
        StatementClass::Admin,
        StatementClass::Transaction,
        StatementClass::Other,
    ];
    for class in &classes {
        let bit = statement_kinds::class_bit(class);
        assert_eq!(statement_kinds::CLASS_NAMES[bit], class.to_string());
    }
    let flags = [
        Flag::DeleteWithoutWhere,
        Flag::UpdateWithoutWhere,
        Flag::Drop,
        Flag::Truncate,
        Flag::DataModifyingCte,
        Flag::ProceduralCode,
        Flag::ExplainAnalyzeWrite,
        Flag::CopyProgram,
        Flag::CopyFile,
        Flag::DangerousFunction,
        Flag::SetRole,
    ];
    for flag in &flags {
        let bit = statement_kinds::flag_bit(flag);
        assert_eq!(statement_kinds::FLAG_NAMES[bit], flag.to_string());
    }
}

#[test]
fn explain_lists_roles_and_classes_of_matched_postgres_rules() {
    let files = Files::new();
    let rules = format!(
        "{SPEC_RULE}\n[[rule]]\nname = \"anyone-anywhere\"\naction = \"allow\"\ntargets = [\"*\"]\n\n[[rule]]\nname = \"stats\"\naction = \"allow\"\ntargets = [\"stats-db\"]\n[rule.postgres]\nallow = []\napprove = [\"read\"]\n"
    );
    let policy = policy(&files, &rules);
    let text = policy.explain(&flow(ORDERS, 1000, "psql")).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].ends_with("matched (target orders-db)"), "{text}");
    assert_eq!(
        lines[1],
        "    postgres: roles app_ro, app_rw; allow read, write, transaction, other; deny ddl, delete_without_where, drop; approve truncate; tables billing.*: deny write; approvers root (1 needed), waits 15m, no grants"
    );
    assert!(lines[2].ends_with("matched (any destination)"), "{text}");
    assert_eq!(
        lines[3],
        "    postgres: roles app_ro, app_rw (every role with credentials); allow every class"
    );
    assert!(lines[4].starts_with("rule stats (allow, "), "{text}");
    assert_eq!(
        lines[5],
        "decision: allow by rule ci-reads-orders (target orders-db, protocol postgres)"
    );
    // A tcp destination gets no postgres lines.
    let text = policy
        .explain(&flow("127.0.0.9:80", 1000, "curl"))
        .to_string();
    assert!(!text.contains("postgres:"), "{text}");
    assert!(
        text.ends_with("decision: allow by rule anyone-anywhere (any destination)\n"),
        "{text}"
    );
}

#[test]
fn read_password_fails_cleanly() {
    let files = Files::new();
    let credential = Credential {
        password_file: files.path("gone"),
    };
    assert_eq!(
        credential.read_password().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::NotFound)
    );
    let empty = Credential {
        password_file: files.write("empty", "\r\n"),
    };
    assert_eq!(
        empty.read_password().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::InvalidData)
    );
    let kept = Credential {
        password_file: files.write("two-lines", "pw\n\n"),
    };
    assert_eq!(
        kept.read_password().expect("read"),
        "pw\n",
        "only one newline is dropped"
    );
    let big = Credential {
        password_file: files.write("big", &"x".repeat(64 * 1024 + 1)),
    };
    assert!(big.read_password().is_err());
}

#[test]
fn session_rules_are_cheap_shared_values() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<SessionRules>();
    shared::<StatementDecision>();
    shared::<Arc<PostgresTarget>>();
    let files = Files::new();
    let policy = policy(&files, SPEC_RULE);
    let session = orders_session(&policy, 1000);
    let copy = session.clone();
    assert_eq!(copy.rule_names().collect::<Vec<_>>(), ["ci-reads-orders"]);
}

#[test]
fn a_policy_file_loaded_twice_gives_the_same_postgres_paths() {
    let files = Files::new();
    let text = with_targets(&files, SPEC_RULE);
    let path = files.write("p.toml", &text);
    let a = load(std::slice::from_ref(&path)).expect("loads");
    let b = load(&[path]).expect("loads");
    assert_eq!(
        a.postgres_target("orders-db"),
        b.postgres_target("orders-db")
    );
}

#[test]
fn recording_settings_default_and_resolve_next_to_their_file() {
    let files = Files::new();
    let policy = load_one(&files, "").expect("empty policy");
    assert_eq!(*policy.recording(), RecordingSettings::default());
    let text = "[recording]\ndir = \"rec\"\nkeys_dir = \"/srv/keys\"\nresult_rows = 5\n";
    let policy = load_one(&files, text).expect("valid [recording]");
    let recording = policy.recording();
    assert!(
        recording.dir.is_absolute() && recording.dir.ends_with("rec"),
        "{recording:?}"
    );
    assert_eq!(recording.keys_dir, PathBuf::from("/srv/keys"));
    assert_eq!(recording.result_rows, 5);
    assert!(recording.enabled);
    let policy = load_one(&files, "[recording]\nenabled = false\n").expect("recording off");
    assert!(!policy.recording().enabled);
    // An unknown key does not hide the problems of the keys beside it.
    let text = "[recording]\ndir = \"\"\nresult_rows = -1\nretention = 3\n";
    let all = errors(load_one(&files, text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages[0].starts_with("dir is empty"), "{messages:?}");
    assert!(
        messages[1].starts_with("result_rows must be"),
        "{messages:?}"
    );
    assert!(
        messages[2].contains("unknown field `retention`"),
        "{messages:?}"
    );
    let text = "[recording]\ndir = \" \"\nresult_rows = -1\n";
    let all = errors(load_one(&files, text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "dir is empty: name a directory (it is created if missing)",
            "result_rows must be 0 to 100000, not -1"
        ]
    );
    // [approvals] keep, and [identity] state_file beside it.
    let policy = load_one(&files, "").expect("empty policy");
    assert_eq!(policy.approvals().keep, super::approval::DEFAULT_KEEP);
    let text = "[approvals]\nkeep = \"90d\"\n[identity]\nstate_file = \"jobs.json\"\n";
    let policy = load_one(&files, text).expect("valid keep and state_file");
    assert_eq!(
        policy.approvals().keep,
        std::time::Duration::from_secs(90 * 86_400)
    );
    assert!(
        policy.identity_state().is_absolute() && policy.identity_state().ends_with("jobs.json")
    );
    for (keep, why) in [
        ("\"5m\"", "keep must be between 1h and 10y"),
        ("\"soon\"", "keep: \"soon\" is not a duration"),
    ] {
        let text = format!("[approvals]\nkeep = {keep}\n");
        let e = only_error(load_one(&files, &text));
        assert_eq!(position(&e), at(&text, keep));
        assert!(e.message.starts_with(why), "{}", e.message);
    }
    let text = "[identity]\nstate_file = \" \"\n";
    let e = only_error(load_one(&files, text));
    assert!(
        e.message.starts_with("state_file is empty"),
        "{}",
        e.message
    );
    let text = "[recording]\npostgres = \"host=db port=notaport\"\n";
    let e = only_error(load_one(&files, text));
    assert_eq!(position(&e), at(text, "\"host=db"));
    assert!(
        e.message.contains("is not a connection string"),
        "{}",
        e.message
    );
    let text =
        "[approvals]\ndir = \"/var/lib/x\"\npostgres = \"host=db.internal user=approvals\"\n";
    let e = only_error(load_one(&files, text));
    assert_eq!(position(&e), at(text, "\"/var/lib/x\""));
    assert!(
        e.message.starts_with("dir is not used with postgres"),
        "{}",
        e.message
    );
    let refused = |text: &str, start: &str| {
        let e = only_error(load_one(&files, text));
        assert!(e.message.starts_with(start), "{}", e.message);
        e
    };
    refused(
        "[recording]\npostgres_password_file = \"pw\"\n",
        "postgres_password_file is only used with postgres",
    );
    let pw = secret(&files, "recorder-pw", "secret", 0o600);
    let text = format!(
        "[recording]\npostgres = \"host=db.internal user=recorder\"\npostgres_password_file = \"{}\"\n",
        pw.display()
    );
    let policy = load_one(&files, &text).expect("valid sink");
    let sink = policy.recording().sink.clone().expect("sink");
    assert_eq!(sink.conninfo, "host=db.internal user=recorder");
    assert_eq!(sink.password_file, Some(pw));
    assert_eq!(
        policy.recording().sink_backlog,
        crate::recording::sink::DEFAULT_BACKLOG
    );
    let text = "[recording]\npostgres = \"host=db\"\npostgres_backlog = 5000\n";
    let policy = load_one(&files, text).expect("valid backlog");
    assert_eq!(policy.recording().sink_backlog, 5000);
    for bad in ["0", "-1", "1000001"] {
        let text = format!("[recording]\npostgres = \"host=db\"\npostgres_backlog = {bad}\n");
        let e = refused(&text, "postgres_backlog must be 1 to 1000000 rows");
        assert_eq!(position(&e), at(&text, bad));
    }
    refused(
        "[recording]\npostgres_backlog = 10\n",
        "postgres_backlog is only used with postgres",
    );
}

#[test]
fn approval_settings_are_checked_where_they_are_written() {
    let files = Files::new();
    let rules = r#"
[approvals]
timeout = "soon"
min_approvals = 0

[[rule]]
name = "no-approvers"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
approve = ["truncate"]

[[rule]]
name = "nothing-to-approve"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
allow = ["read"]
[rule.approval]
approvers = ["root"]

[[rule]]
name = "bad-keys"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
approve = ["drop"]
[rule.approval]
approvers = ["no-such-user-here", "group:no-such-group-here", "team:x"]
max_grant = "0s"
notify = [{ url = "ftp://hooks.example/x" }, { url = "not a url" }, { bearer_file = "x" }]
"#;
    let text = format!("{}\n{rules}", targets(&files));
    let all = errors(load_one(&files, &text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    let expect = [
        (at(&text, "\"soon\""), "timeout: \"soon\" is not a duration"),
        (
            at(&text, "0\n\n[[rule]]"),
            "min_approvals must be 1 to 10, not 0",
        ),
        (
            at(&text, "[[rule]]\nname = \"no-approvers\""),
            "rule \"no-approvers\" holds statements for approval but names no approver",
        ),
        (
            at(&text, "[rule.approval]\napprovers = [\"root\"]"),
            "[rule.approval] of rule \"nothing-to-approve\" has nothing to approve",
        ),
        (
            at(&text, "\"no-such-user-here\""),
            "approver user \"no-such-user-here\" does not exist on this host",
        ),
        (
            at(&text, "\"group:no-such-group-here\""),
            "approver group \"no-such-group-here\" does not exist on this host",
        ),
        (at(&text, "\"team:x\""), "unknown kind \"team\""),
        (at(&text, "\"0s\""), "max_grant: \"0s\" is zero"),
        (
            at(&text, "\"ftp://hooks.example/x\""),
            "has scheme \"ftp\": only http and https are supported",
        ),
        (
            at(&text, "\"not a url\""),
            "webhook url \"not a url\" is malformed",
        ),
        (at(&text, "{ bearer_file"), "this notify entry has no url"),
    ];
    for (position_at, message) in expect {
        assert!(
            all.iter()
                .any(|d| position(d) == position_at && d.message.contains(message)),
            "no {message:?} at {position_at:?} in {messages:#?}"
        );
    }
}

#[test]
fn rule_approval_keys_override_the_approvals_defaults() {
    let files = Files::new();
    let rules = r#"
[approvals]
approvers = ["root"]
timeout = "5m"
max_grant = "1h"

[[rule]]
name = "careful"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
[rule.postgres]
approve = ["truncate"]
[rule.approval]
min_approvals = 2
approvers = ["root", "group:root"]
"#;
    let text = format!("{}\n{rules}", targets(&files));
    let policy = load_one(&files, &text).expect("loads");
    let session = orders_session(&policy, 1000);
    let approval = session.approval("careful").expect("holds");
    assert_eq!(approval.min_approvals, 2);
    assert_eq!(approval.timeout, std::time::Duration::from_secs(300));
    assert_eq!(
        approval.max_grant,
        Some(std::time::Duration::from_secs(3600))
    );
    let names: Vec<String> = approval.approvers.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["root", "group:root"]);
    assert!(session.approval("nope").is_none());
}

/// Found in review: more approvals than listed users could ever give
/// loaded, and every held statement waited out its timeout.
#[test]
fn min_approvals_above_the_listed_users_is_an_error() {
    let files = Files::new();
    let rules = r#"
[approvals]
approvers = ["root", "root"]
min_approvals = 2

[[rule]]
name = "careful"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
approve = ["truncate"]
"#;
    let text = format!("{}\n{rules}", targets(&files));
    let error = only_error(load_one(&files, &text));
    assert_eq!(
        error.message,
        "rule \"careful\" needs 2 approvals but names 1 distinct approver (root): no statement it holds could ever be released; add approvers (or a group) or lower min_approvals"
    );
    assert_eq!(position(&error), at(&text, "[[rule]]"));
    // A group may hold any number of approvers.
    let grouped = text.replace(r#"["root", "root"]"#, r#"["root", "group:root"]"#);
    load_one(&files, &grouped).expect("a group may meet min_approvals");
}

const FUNCTION_RULE: &str = r#"[[rule]]
name = "ci-functions"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
[rule.postgres]
allow = ["read", "write", "transaction", "other"]
deny_functions = ["cron.*", "run_sql"]
approve_functions = ["pgr_*"]
"#;

/// Extensions ship functions that run SQL given as text, which the
/// classifier cannot see (found in review: xml2's `xpath_table`); a rule
/// names them by schema or name, whatever else the statement is.
#[test]
fn calls_of_listed_functions_are_denied_or_held() {
    let files = Files::new();
    let policy = policy(&files, FUNCTION_RULE);
    let session = orders_session(&policy, 1000);
    let decide = |sql: &str, path: &SearchPath| {
        let classification = crate::protocols::postgres::classify::classify(sql)
            .unwrap_or_else(|e| panic!("{sql:?} does not classify: {e}"));
        session.decide_all(&classification, path)
    };
    let cron = SearchPath::parse("public, cron", "app_rw").unwrap();
    for (sql, path, verdict, reason) in [
        (
            "SELECT cron.schedule('0 * * * *', 'DELETE FROM orders')",
            &default_path(),
            StatementVerdict::Deny,
            "calling function cron.schedule is denied (functions \"cron.*\")",
        ),
        // Unqualified: found in cron only when the path holds it.
        (
            "SELECT schedule('0 * * * *', 'DELETE FROM orders')",
            &cron,
            StatementVerdict::Deny,
            "calling function schedule (cron.schedule on the search_path) is denied (functions \"cron.*\")",
        ),
        (
            "SELECT schedule('x')",
            &default_path(),
            StatementVerdict::Allow,
            "statement class read is allowed",
        ),
        // A schema glob cannot tell a built-in from the schema's own
        // function without the catalog: with cron on the path, every
        // unqualified call may be cron's.
        (
            "SELECT lower('x')",
            &cron,
            StatementVerdict::Deny,
            "calling function lower (cron.lower on the search_path) is denied (functions \"cron.*\")",
        ),
        (
            "SELECT schedule('x')",
            &SearchPath::unknown(),
            StatementVerdict::Deny,
            "calling function schedule (any schema: the session's search_path is unknown) is denied (functions \"cron.*\")",
        ),
        // A bare name is any schema; a CTE takes the full parse, a plain
        // SELECT the fast path: both see the call.
        (
            "WITH x AS (SELECT 1) SELECT util.RUN_SQL('DELETE FROM orders') FROM x",
            &default_path(),
            StatementVerdict::Deny,
            "calling function util.run_sql is denied (functions \"run_sql\")",
        ),
        (
            "SELECT * FROM orders WHERE id = (SELECT run_sql('x'))",
            &default_path(),
            StatementVerdict::Deny,
            "calling function run_sql is denied (functions \"run_sql\")",
        ),
        (
            "CALL public.run_sql('x')",
            &default_path(),
            StatementVerdict::Deny,
            "calling function public.run_sql is denied (functions \"run_sql\")",
        ),
        (
            "SELECT * FROM pgr_dijkstra('SELECT * FROM edges', 1, 2)",
            &default_path(),
            StatementVerdict::Approve,
            "calling function pgr_dijkstra needs approval (functions \"pgr_*\")",
        ),
        // Other functions, and a function's name used as a column, are not calls.
        (
            "SELECT lower(run_sql), now() FROM orders",
            &default_path(),
            StatementVerdict::Allow,
            "statement class read is allowed",
        ),
    ] {
        let d = decide(sql, path);
        assert_eq!(
            (d.verdict, d.rule.as_ref(), d.reason.as_str()),
            (verdict, "ci-functions", reason),
            "{sql:?}"
        );
    }
}

#[test]
fn function_patterns_are_checked_where_they_are_written() {
    let files = Files::new();
    let rule = r#"[[rule]]
name = "r"
action = "allow"
targets = ["orders-db"]
[rule.postgres]
deny_functions = ["a.b.c", ".x", "run_sql(text)", "[z"]
approve_functions = []
"#;
    let text = with_targets(&files, rule);
    let all = errors(load_one(&files, &text));
    let found: Vec<(usize, usize)> = all.iter().map(position).collect();
    assert_eq!(
        found,
        vec![
            at(&text, "\"a.b.c\""),
            at(&text, "\".x\""),
            at(&text, "\"run_sql(text)\""),
            at(&text, "\"[z\""),
            at(&text, "[]"),
        ],
        "{all:#?}"
    );
    assert!(
        all[0].message.contains("more than one dot"),
        "{}",
        all[0].message
    );
    assert!(all[1].message.contains("empty part"), "{}", all[1].message);
    assert!(
        all[2].message.contains("argument list"),
        "{}",
        all[2].message
    );
    assert!(
        all[3].message.contains("not a valid glob"),
        "{}",
        all[3].message
    );
    assert!(
        all[4].message.contains("function list is empty"),
        "{}",
        all[4].message
    );
}

/// Found in review: renaming, dropping or granting a whole schema, and a
/// `CASCADE`, reach tables a rule covers without naming them. A rule that
/// allows DDL, DCL, DROP and TRUNCATE but protects `billing.*` now denies
/// exactly those that may reach billing.
#[test]
fn a_table_rule_covers_statements_on_its_whole_schema() {
    let files = Files::new();
    let policy = policy(
        &files,
        r#"[[rule]]
name = "migrations"
action = "allow"
targets = ["orders-db"]
users = ["runner"]
[rule.postgres]
allow = ["read", "write", "ddl", "dcl", "transaction", "other"]
[[rule.postgres.tables]]
tables = ["billing.*"]
deny = ["write"]
"#,
    );
    let session = orders_session(&policy, 1000);
    let decide = |sql: &str| {
        let classification = crate::protocols::postgres::classify::classify(sql)
            .unwrap_or_else(|e| panic!("{sql:?} does not classify: {e}"));
        session.decide_all(&classification, &default_path())
    };
    for (sql, verdict, reason) in [
        (
            "ALTER SCHEMA billing RENAME TO b2",
            StatementVerdict::Deny,
            "write access to every table of schema billing is denied (tables \"billing.*\")",
        ),
        (
            "ALTER SCHEMA b2 RENAME TO billing",
            StatementVerdict::Deny,
            "write access to every table of schema billing is denied (tables \"billing.*\")",
        ),
        (
            "DROP SCHEMA billing",
            StatementVerdict::Deny,
            "write access to every table of schema billing is denied (tables \"billing.*\")",
        ),
        (
            "GRANT ALL ON ALL TABLES IN SCHEMA billing TO ci",
            StatementVerdict::Deny,
            "write access to every table of schema billing is denied (tables \"billing.*\")",
        ),
        (
            "TRUNCATE public.customers CASCADE",
            StatementVerdict::Deny,
            "write access to every table (the statement reaches tables it does not name: CASCADE, or what a role owns) is denied (tables \"billing.*\")",
        ),
        (
            "ALTER SCHEMA scratch RENAME TO scratch2",
            StatementVerdict::Allow,
            "statement class ddl is allowed",
        ),
        (
            "GRANT ALL ON ALL TABLES IN SCHEMA public TO ci",
            StatementVerdict::Allow,
            "statement class dcl is allowed",
        ),
        (
            "TRUNCATE public.customers",
            StatementVerdict::Allow,
            "statement class write is allowed",
        ),
        // Reviewed: what ORMs send while migrating drops dependents, not rows.
        (
            "DROP TABLE IF EXISTS \"users\" CASCADE",
            StatementVerdict::Allow,
            "statement class ddl is allowed",
        ),
        (
            "DROP SCHEMA public CASCADE",
            StatementVerdict::Allow,
            "statement class ddl is allowed",
        ),
    ] {
        let d = decide(sql);
        assert_eq!((d.verdict, d.reason.as_str()), (verdict, reason), "{sql:?}");
    }
}

/// Found in review: `SELECT j.run_sql FROM jobs j` calls `run_sql(j)`
/// (attribute notation) past `deny_functions = ["run_sql"]`. A name after
/// a dot counts as a call only for a pattern that names the function
/// exactly: globs would take every qualified column for one.
#[test]
fn calls_in_attribute_notation_meet_exact_function_patterns() {
    let files = Files::new();
    let policy = policy(&files, FUNCTION_RULE);
    let session = orders_session(&policy, 1000);
    let cron = SearchPath::parse("public, cron", "app_rw").unwrap();
    let decide = |sql: &str| {
        let classification = crate::protocols::postgres::classify::classify(sql)
            .unwrap_or_else(|e| panic!("{sql:?} does not classify: {e}"));
        let d = session.decide_all(&classification, &cron);
        (d.verdict, d.reason)
    };
    for sql in [
        "SELECT j.run_sql FROM jobs j",
        "SELECT (j).run_sql FROM jobs j WHERE j.id = 1",
    ] {
        assert_eq!(
            decide(sql),
            (
                StatementVerdict::Deny,
                "calling function run_sql is denied (functions \"run_sql\")".to_owned()
            ),
            "{sql:?}"
        );
    }
    // `cron.*` and `pgr_*` are globs: qualified columns are not calls to them.
    for sql in [
        "SELECT j.id, j.schedule FROM jobs j",
        "SELECT t.pgr_x FROM t",
    ] {
        assert_eq!(decide(sql).0, StatementVerdict::Allow, "{sql:?}");
    }
}

/// A masking entry naming a target whose own configuration failed is not
/// told that no postgres targets exist: the message says which targets
/// were left out for their errors (found in review).
#[test]
fn masking_beside_an_invalid_postgres_target_names_it() {
    let files = Files::new();
    let pw = secret(&files, "pw", "secret", 0o600);
    let text = format!(
        r#"[[target]]
name = "db"
addresses = ["127.0.0.3"]
ports = [5432]
protocol = "postgres"
[target.postgres]
tls = "require"
server_name = "db.internal"
[target.postgres.credentials.app_rw]
password_file = "{}"

[[target]]
name = "web"
addresses = ["127.0.0.4"]
ports = [80]

[[masking]]
name = "m"
targets = ["db", "web"]
columns = ["a.b.email"]
"#,
        pw.display()
    );
    let all = errors(load_one(&files, &text));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0].message.starts_with("server_name is only used with"),
        "{}",
        all[0].message
    );
    assert_eq!(
        all[1].message,
        "target \"web\" is not a postgres target, and masking applies to postgres results only; no valid postgres target is defined (targets with errors reported above are not counted: db)"
    );
}
