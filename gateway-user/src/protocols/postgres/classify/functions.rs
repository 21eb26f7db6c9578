//! Functions whose call alone makes a statement risky, whatever its class.

/// Functions flagged [`Flag::DangerousFunction`](super::Flag::DangerousFunction) wherever they
/// are called (select list, FROM, WHERE, DEFAULT, CALL arguments, COPY query…).
///
/// Matched by the function's own name, ignoring ASCII case and ignoring the
/// schema: `pg_catalog.pg_read_file` and `public.dblink` (extensions install
/// where they are told) are both caught, at the price of also flagging a
/// user's own function that happens to share a name.
///
/// Why each family is here:
/// * other sessions: ending or cancelling backends; resetting the statistics monitoring reads;
/// * the server's files and processes: reading, listing or writing files, large-object import/export;
/// * server state: configuration reload, log rotation, WAL switch, promotion, backups, replication slots;
/// * other sessions' data: reading a logical replication slot hands out decoded WAL, every
///   column of every changed row, past masking rules;
/// * other servers: dblink opens connections and runs SQL there;
/// * SQL hidden in a string: `query_to_xml`, `table_to_xml`, `ts_stat`, `crosstab`… run a query
///   (or read a table) given as text, which the classifier cannot see, so its tables and
///   function calls would escape every other rule. Extensions that ship such evaluators are
///   covered by name too: contrib `xml2` (`xpath_table`), pg_cron (`cron.schedule`, a deferred
///   statement that runs later as the job's role), pg_background.
///
/// A list by name is a denylist: an extension it does not know can hide SQL in a string the
/// same way. The README says so, and to deny `procedural_code` where that matters.
///
/// `set_config` is handled apart: only a call that sets `role` or
/// `session_authorization` (or whose setting name is not a constant) is flagged.
pub const DANGEROUS_FUNCTIONS: &[&str] = &[
    // Other sessions.
    "pg_terminate_backend",
    "pg_cancel_backend",
    // Statistics other sessions and monitoring rely on.
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_subscription_stats",
    "pg_stat_statements_reset",
    // Server files and processes.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalmapdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir",
    "pg_write_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    // Server state.
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    // Other sessions' data, past masking: decoded WAL.
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_binary_changes",
    // Other servers.
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "dblink_open",
    // SQL (or a table name) passed as text.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    // What a cursor, declared over any query, returns.
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    // Extensions that run SQL given as text (schema ignored, so a user's
    // own `schedule()` is flagged too).
    "xpath_table",
    "schedule",
    "schedule_in_database",
    "alter_job",
    "pg_background_launch",
];

/// Whether `name` (a function's own name, without schema) is in [`DANGEROUS_FUNCTIONS`].
pub fn is_dangerous_function(name: &str) -> bool {
    DANGEROUS_FUNCTIONS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

/// Built-in functions that change data, so a statement calling them is a
/// write even when it is a SELECT (`SELECT lo_unlink(oid) FROM
/// pg_largeobject_metadata`). Matched like [`DANGEROUS_FUNCTIONS`]: own
/// name, ASCII case ignored, any schema.
///
/// * large objects: any role may create them, and their owner may write or
///   delete them, whatever its table privileges (`lo_import` is in
///   [`DANGEROUS_FUNCTIONS`] already: it reads a server file);
/// * `setval`: moves a sequence, so later inserts reuse or skip keys
///   (`nextval` only takes the next value, as every INSERT does);
/// * `pg_notify`: the function form of NOTIFY, which is a write;
/// * `pg_logical_emit_message`: writes a message into the WAL, which every
///   logical decoding consumer then receives.
pub(crate) const WRITING_FUNCTIONS: &[&str] = &[
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "lo_unlink",
    "setval",
    "pg_notify",
    "pg_logical_emit_message",
];

/// Whether `name` (a function's own name, without schema) is in [`WRITING_FUNCTIONS`].
pub(crate) fn is_writing_function(name: &str) -> bool {
    WRITING_FUNCTIONS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

/// The setting by which unqualified table names resolve.
const SEARCH_PATH: &str = "search_path";

/// Whether setting `name` is `search_path` (PostgreSQL ignores case).
pub(crate) fn is_search_path(name: &str) -> bool {
    name.eq_ignore_ascii_case(SEARCH_PATH)
}

/// Whether a relation named `schema.name` (as written) is the `pg_settings`
/// view, whose UPDATE rule calls `set_config` for every row it matches.
/// Unqualified, it is: `pg_catalog` comes first in every search path.
pub(crate) fn is_settings_view(schema: Option<&str>, name: &str) -> bool {
    name == "pg_settings" && schema.is_none_or(|s| s == "pg_catalog")
}

/// The function whose first argument names a sequence it sets.
pub(crate) const SETVAL: &str = "setval";

/// The function whose first argument names a setting to change.
pub(crate) const SET_CONFIG: &str = "set_config";

/// Settings that change who the session acts as. PostgreSQL looks setting
/// names up ignoring case, so `SET "ROLE"` and `set_config('Role', …)` count too.
const IDENTITY_SETTINGS: &[&str] = &["role", "session_authorization"];

/// Whether setting `name` changes the session's identity.
pub(crate) fn is_identity_setting(name: &str) -> bool {
    IDENTITY_SETTINGS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// Whether the summary fast path must hand a statement calling `name` to the
/// full parse: dangerous and writing functions, and `set_config`, whose
/// arguments matter.
pub(crate) fn needs_inspection(name: &str) -> bool {
    is_dangerous_function(name)
        || is_writing_function(name)
        || name.eq_ignore_ascii_case(SET_CONFIG)
}

/// Why setting `name` to `value` must be refused, if it must.
///
/// The classifier reads SQL with `standard_conforming_strings = on` and as
/// UTF-8. A session that turns the former off, or switches `client_encoding`
/// to one where an ASCII byte can end a multibyte character (SJIS, BIG5,
/// GBK, GB18030, UHC, JOHAB: `\` as a trail byte), makes the server read
/// `E'…\' ; DROP …'` differently from the gateway. `value` is `None` for
/// RESET/DEFAULT (allowed: back to the connection's setting), `Some(None)`
/// for a value that is not a constant.
pub(crate) fn lexer_setting_refusal(
    name: &str,
    value: Option<Option<&str>>,
) -> Option<&'static str> {
    let value = value?;
    if name.eq_ignore_ascii_case("standard_conforming_strings") {
        let on = value.is_some_and(|v| {
            ["on", "true", "yes", "1", "t", "y"]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(v.trim()))
        });
        return (!on).then_some("turning standard_conforming_strings off makes the server read string literals differently");
    }
    if name.eq_ignore_ascii_case("client_encoding") {
        let safe = value.is_some_and(is_ascii_safe_encoding);
        return (!safe)
            .then_some("this client_encoding lets ASCII bytes hide inside multibyte characters");
    }
    None
}

/// Client encodings in which every ASCII byte is a character of its own, so
/// the server splits the text into tokens exactly as a UTF-8 reader does.
/// Names are compared the way PostgreSQL does: lower case, alphanumerics only.
/// Unknown names are not safe (PostgreSQL rejects them anyway).
fn is_ascii_safe_encoding(name: &str) -> bool {
    let norm: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const EXACT: &[&str] = &[
        "utf8",
        "unicode",
        "sqlascii",
        "win866",
        "windows866",
        "win874",
        "windows874",
        "alt",
        "tcvn",
        "tcvn5712",
        "vscii",
        "abc",
        "muleinternal",
        "koi8",
        "koi8r",
        "koi8u",
    ];
    // Windows single-byte code pages are win1250…win1258; win932/936/949/950 are the unsafe ones.
    const PREFIXES: &[&str] = &["latin", "iso8859", "win125", "windows125", "euc"];
    EXACT.contains(&norm.as_str()) || PREFIXES.iter().any(|p| norm.starts_with(p))
}
