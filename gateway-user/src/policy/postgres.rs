//! `[target.postgres]` and `[rule.postgres]`: upstream, TLS and credentials of a database, and the statement rules of a flow.
use std::{collections::BTreeMap, io, net::SocketAddr, path::PathBuf, sync::Arc};

use glob::Pattern;
use toml::Spanned;

use super::{
    eval::Verdict,
    load::{At, Report, Source},
    model::{Int, PostgresRuleSection, PostgresTargetSection, TableRuleEntry},
    secret_file,
    statement_kinds::{CLASS_NAMES, Kinds, Set, parse_access, parse_class, parse_kind},
};

/// Default bound on one protocol message, either direction.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const MIN_MAX_MESSAGE_BYTES: i64 = 1024;
const MAX_MAX_MESSAGE_BYTES: i64 = 1024 * 1024 * 1024;
/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const ROLE_MAX_BYTES: usize = 63;

/// A target with `protocol = "postgres"`: how the gateway reaches the
/// database and which roles it can log in as on a job's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    pub name: Arc<str>,
    /// `None`: the connection's original destination.
    pub upstream: Option<SocketAddr>,
    pub tls: UpstreamTls,
    /// Whether a job's SSLRequest is answered with TLS (a generated
    /// certificate) instead of `N`, for clients that insist on TLS.
    pub client_tls: bool,
    /// Largest protocol message accepted from either side.
    pub max_message_bytes: usize,
    /// Database role → where its password is; never empty.
    pub credentials: BTreeMap<String, Credential>,
}

/// TLS between the gateway and the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    /// Encrypted, server certificate not verified.
    Require,
    /// Certificate verified against `ca_file`, for `server_name` (default:
    /// the upstream IP).
    VerifyFull {
        ca_file: PathBuf,
        server_name: Option<String>,
    },
}

/// Where one role's password is. The password itself is not kept in the
/// policy: it is read when a session logs in, so rotating the file needs no
/// reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub password_file: PathBuf,
}

impl Credential {
    /// The password, without one trailing newline. Errors when the file is
    /// not a regular file, larger than 64 KiB, not UTF-8 or empty: read as
    /// every other secret the daemon re-reads while running.
    pub fn read_password(&self) -> io::Result<String> {
        crate::regular_file::read_secret(&self.password_file)
    }
}

/// A `[rule.postgres]`, compiled; a rule without one gets
/// [`PostgresRule::UNRESTRICTED`].
#[derive(Debug)]
pub(super) struct PostgresRule {
    /// `None`: every role that has credentials in the session's target.
    pub roles: Option<Vec<String>>,
    pub allow: Set,
    pub deny: Kinds,
    pub approve: Kinds,
    pub tables: Vec<TableRule>,
    /// Functions whose call is denied, or held, whatever the statement's
    /// class: those an extension ships that run SQL given as text, or do
    /// what policy should decide (`cron.*`).
    pub deny_functions: Vec<FunctionPattern>,
    pub approve_functions: Vec<FunctionPattern>,
}

impl PostgresRule {
    /// True when some statement could be held for approval under this rule.
    pub fn holds_anything(&self) -> bool {
        !self.approve.is_empty()
            || self.tables.iter().any(|t| !t.approve.is_empty())
            || !self.approve_functions.is_empty()
    }

    pub const UNRESTRICTED: PostgresRule = PostgresRule {
        roles: None,
        allow: Set::all(CLASS_NAMES.len()),
        deny: Kinds {
            classes: Set::EMPTY,
            flags: Set::EMPTY,
        },
        approve: Kinds {
            classes: Set::EMPTY,
            flags: Set::EMPTY,
        },
        tables: Vec::new(),
        deny_functions: Vec::new(),
        approve_functions: Vec::new(),
    };
}

/// One `[[rule.postgres.tables]]`.
#[derive(Debug)]
pub(super) struct TableRule {
    pub patterns: Vec<TablePattern>,
    /// Sets of [`ACCESS_NAMES`] bits.
    pub deny: Set,
    pub approve: Set,
}

/// `"schema.function"` or `"function"` (any schema) as two globs.
#[derive(Debug)]
pub(super) struct FunctionPattern {
    pub text: String,
    pub schema: Pattern,
    pub function: Pattern,
}

/// `"schema.table"` as two globs, so matching needs no formatting.
#[derive(Debug)]
pub(super) struct TablePattern {
    pub text: String,
    pub schema: Pattern,
    pub table: Pattern,
}

pub(super) struct Place<'a> {
    pub sources: &'a [Source],
    pub file: usize,
}

/// `[target.postgres]` of target `name`.
pub(super) fn target(
    name: &Arc<str>,
    section: &Spanned<PostgresTargetSection>,
    place: &Place<'_>,
    report: &mut Report,
) -> Option<PostgresTarget> {
    let file = place.file;
    let section_at = At::of(file, section);
    let section = section.get_ref();
    let mut ok = true;
    let upstream =
        section
            .upstream
            .as_ref()
            .and_then(|text| match parse_upstream(text.get_ref()) {
                Ok(addr) => Some(addr),
                Err(message) => {
                    report.error(At::of(file, text), message);
                    ok = false;
                    None
                }
            });
    let tls = tls(section, place, report);
    ok &= tls.is_some();
    let max_message_bytes = match &section.max_message_bytes {
        None => DEFAULT_MAX_MESSAGE_BYTES,
        Some(value) => {
            let Int(n) = *value.get_ref();
            match usize::try_from(n) {
                Ok(bytes) if (MIN_MAX_MESSAGE_BYTES..=MAX_MAX_MESSAGE_BYTES).contains(&n) => bytes,
                _ => {
                    report.error(
                        At::of(file, value),
                        format!("max_message_bytes must be {MIN_MAX_MESSAGE_BYTES} (1 KiB) to {MAX_MAX_MESSAGE_BYTES} (1 GiB), not {n}; the default is {DEFAULT_MAX_MESSAGE_BYTES} (16 MiB)"),
                    );
                    ok = false;
                    DEFAULT_MAX_MESSAGE_BYTES
                }
            }
        }
    };
    let mut credentials = BTreeMap::new();
    match &section.credentials {
        Some(list) if !list.get_ref().is_empty() => {
            for (role, entry) in list.get_ref() {
                match credential(role, entry, place, report) {
                    Some(credential) => {
                        credentials.insert(role.get_ref().clone(), credential);
                    }
                    None => ok = false,
                }
            }
        }
        other => {
            let at = other.as_ref().map_or(section_at, |list| At::of(file, list));
            report.error(
                at,
                format!(
                    "[target.postgres] of target {name:?} has no credentials, so no job could log in: add [target.postgres.credentials.<role>] with password_file = \"/etc/chokepoint/secrets/...\" for each database role jobs may use"
                ),
            );
            ok = false;
        }
    }
    ok.then(|| PostgresTarget {
        name: name.clone(),
        upstream,
        tls: tls.unwrap_or(UpstreamTls::Disable),
        client_tls: section.client_tls.as_ref().is_some_and(|t| *t.get_ref()),
        max_message_bytes,
        credentials,
    })
}

fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        Ok(_) => Err(format!(
            "upstream {text:?} has port 0: write the database's port, e.g. \"{}:5432\"",
            text.rsplit_once(':').map_or(text, |(host, _)| host)
        )),
        Err(_) => Err(format!(
            "upstream {text:?} is not an IP address and port: write e.g. \"10.0.0.5:5432\" or \"[fd00::5]:5432\" (host names are not resolved), or remove it to use the connection's original destination"
        )),
    }
}

fn tls(
    section: &PostgresTargetSection,
    place: &Place<'_>,
    report: &mut Report,
) -> Option<UpstreamTls> {
    let file = place.file;
    let mode = section
        .tls
        .as_ref()
        .map_or("disable", |t| t.get_ref().as_str());
    let verify_full = mode == "verify-full";
    let mut ok = true;
    // Only a written `tls` can be invalid or "verify-full".
    let tls_at = section.tls.as_ref().map(|t| At::of(file, t));
    if !matches!(mode, "disable" | "require" | "verify-full") {
        if let Some(at) = tls_at {
            report.error(
                at,
                format!("tls must be \"disable\", \"require\" or \"verify-full\", not {mode:?}"),
            );
        }
        ok = false;
    }
    let ca_file = match (&section.ca_file, verify_full) {
        (Some(ca), true) => {
            let path = secret_file::resolve(place.sources, file, ca.get_ref());
            let usable = secret_file::check_readable(&path, "ca_file").and_then(|()| {
                crate::protocols::postgres::tls::load_roots(&path)
                    .map(drop)
                    .map_err(|e| format!("ca_file: {e}"))
            });
            if let Err(message) = usable {
                report.error(At::of(file, ca), message);
                ok = false;
            }
            Some(path)
        }
        (Some(ca), false) => {
            report.error(
                At::of(file, ca),
                format!("ca_file is only used with tls = \"verify-full\" (tls is {mode:?}): set tls = \"verify-full\", or remove ca_file"),
            );
            ok = false;
            None
        }
        (None, true) => {
            if let Some(at) = tls_at {
                report.error(
                    at,
                    "tls = \"verify-full\" needs ca_file = \"/etc/chokepoint/<target>-ca.pem\": the CA certificate(s) that sign the database's certificate",
                );
            }
            ok = false;
            None
        }
        (None, false) => None,
    };
    let server_name = match &section.server_name {
        Some(name) if !verify_full => {
            report.error(
                At::of(file, name),
                format!("server_name is only used with tls = \"verify-full\" (tls is {mode:?}): set tls = \"verify-full\", or remove server_name"),
            );
            ok = false;
            None
        }
        Some(name) => {
            let text = name.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 253
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
            if !valid {
                report.error(
                    At::of(file, name),
                    format!("server_name {text:?} must be the host name (or IP) in the database's certificate, such as \"db.internal\""),
                );
                ok = false;
            }
            Some(text.clone())
        }
        None => None,
    };
    if !ok {
        return None;
    }
    Some(match (mode, ca_file) {
        ("require", _) => UpstreamTls::Require,
        ("verify-full", Some(ca_file)) => UpstreamTls::VerifyFull {
            ca_file,
            server_name,
        },
        _ => UpstreamTls::Disable,
    })
}

fn credential(
    role: &Spanned<String>,
    entry: &Spanned<super::model::CredentialEntry>,
    place: &Place<'_>,
    report: &mut Report,
) -> Option<Credential> {
    let file = place.file;
    let name = role.get_ref();
    if name.is_empty() || name.len() > ROLE_MAX_BYTES || name.contains('\0') {
        report.error(
            At::of(file, role),
            format!("role {name:?} is not a PostgreSQL role name: it must be 1 to {ROLE_MAX_BYTES} bytes without NUL"),
        );
        return None;
    }
    let Some(written) = &entry.get_ref().password_file else {
        report.error(
            At::of(file, entry),
            format!("credentials for role {name:?} have no password_file: add password_file = \"/etc/chokepoint/secrets/<target>-{name}\" (mode 0600)"),
        );
        return None;
    };
    let path = secret_file::resolve(place.sources, file, written.get_ref());
    match secret_file::read_secret(&path, "password_file") {
        // Checked here, not first at a job's login: PostgreSQL passwords
        // are text, and the cleartext and md5 exchanges end them at a NUL.
        Ok(bytes) if std::str::from_utf8(&bytes).is_err() || bytes.contains(&0) => {
            report.error(
                At::of(file, written),
                format!(
                    "password_file {} is not a text password (it is not UTF-8, or holds a NUL byte): write the password as one line of text",
                    path.display()
                ),
            );
            None
        }
        Ok(_) => Some(Credential {
            password_file: path,
        }),
        Err(message) => {
            report.error(At::of(file, written), message);
            None
        }
    }
}

/// What a `[rule.postgres]` is checked against: the rule's action and the
/// postgres targets it names.
pub(super) struct RuleScope<'a> {
    pub action: Option<Verdict>,
    pub rule_label: &'a str,
    /// Every target the rule names compiled (a broken one is reported
    /// where it is declared, so nothing more is said about it here).
    pub targets_known: bool,
    pub postgres_targets: Vec<&'a PostgresTarget>,
}

/// `[rule.postgres]` of an allow rule.
pub(super) fn rule(
    section: &Spanned<PostgresRuleSection>,
    scope: &RuleScope<'_>,
    file: usize,
    report: &mut Report,
) -> Option<PostgresRule> {
    let at = At::of(file, section);
    let section = section.get_ref();
    let mut ok = true;
    if matches!(scope.action, Some(Verdict::Deny)) {
        report.error(
            at,
            "[rule.postgres] is only valid in allow rules: a deny rule refuses the whole connection; remove this section or set action = \"allow\"",
        );
        ok = false;
    } else if scope.targets_known && scope.postgres_targets.is_empty() {
        report.error(
            at,
            format!(
                "[rule.postgres] applies to postgres targets, and {} names none: add a target with protocol = \"postgres\" to targets, or remove this section",
                scope.rule_label
            ),
        );
        ok = false;
    }
    let roles = roles(section, scope, file, report);
    let mut allow = Set::all(CLASS_NAMES.len());
    if let Some(list) = &section.allow {
        allow = Set::EMPTY;
        for name in list.get_ref() {
            match parse_class(name.get_ref()) {
                Ok(bit) => allow.insert(bit),
                Err(message) => {
                    report.error(At::of(file, name), message);
                    ok = false;
                }
            }
        }
    }
    let deny = kinds(section.deny.as_ref(), file, report);
    let approve = kinds(section.approve.as_ref(), file, report);
    if let (Some(deny), Some(list)) = (deny, &section.approve) {
        for name in list.get_ref() {
            let mut one = Kinds::default();
            if parse_kind(name.get_ref(), &mut one).is_ok() && deny.intersects(one) {
                report.error(
                    At::of(file, name),
                    format!(
                        "{:?} is in both deny and approve, and deny always wins: remove it from one of them",
                        name.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    let mut tables = Vec::new();
    for entry in section.tables.iter().flatten() {
        match table_rule(entry, file, report) {
            Some(rule) => tables.push(rule),
            None => ok = false,
        }
    }
    let deny_functions = function_patterns(section.deny_functions.as_ref(), file, report);
    let approve_functions = function_patterns(section.approve_functions.as_ref(), file, report);
    let (Ok(roles), Some(deny), Some(approve), Some(deny_functions), Some(approve_functions)) =
        (roles, deny, approve, deny_functions, approve_functions)
    else {
        return None;
    };
    ok.then_some(PostgresRule {
        roles,
        allow,
        deny,
        approve,
        tables,
        deny_functions,
        approve_functions,
    })
}

fn roles(
    section: &PostgresRuleSection,
    scope: &RuleScope<'_>,
    file: usize,
    report: &mut Report,
) -> Result<Option<Vec<String>>, ()> {
    let Some(list) = &section.roles else {
        return Ok(None);
    };
    if list.get_ref().is_empty() {
        report.error(
            At::of(file, list),
            "roles is empty, so this rule would let the job log in as nobody: list roles, or remove roles to allow every role with credentials",
        );
        return Err(());
    }
    let mut ok = true;
    let mut roles = Vec::new();
    for role in list.get_ref() {
        let name = role.get_ref();
        let missing: Vec<&PostgresTarget> = scope
            .postgres_targets
            .iter()
            .copied()
            .filter(|t| !t.credentials.contains_key(name))
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|t| format!("{:?}", &*t.name)).collect();
            let have: Vec<String> = missing
                .iter()
                .map(|t| {
                    let roles: Vec<&str> = t.credentials.keys().map(String::as_str).collect();
                    format!("{}: {}", t.name, roles.join(", "))
                })
                .collect();
            report.error(
                At::of(file, role),
                format!(
                    "role {name:?} has no credentials in target{} {}: add [target.postgres.credentials.{}] with password_file = \"...\" there, or remove it from roles (roles with credentials: {})",
                    if missing.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    toml_key(name),
                    have.join("; ")
                ),
            );
            ok = false;
        }
        if !roles.contains(name) {
            roles.push(name.clone());
        }
    }
    if ok { Ok(Some(roles)) } else { Err(()) }
}

/// A role as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// `deny` or `approve` of a `[rule.postgres]`: `None` when a name is bad.
fn kinds(
    list: Option<&Spanned<Vec<Spanned<String>>>>,
    file: usize,
    report: &mut Report,
) -> Option<Kinds> {
    let mut kinds = Kinds::default();
    let mut ok = true;
    for name in list.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
        if let Err(message) = parse_kind(name.get_ref(), &mut kinds) {
            report.error(At::of(file, name), message);
            ok = false;
        }
    }
    ok.then_some(kinds)
}

fn table_rule(
    entry: &Spanned<TableRuleEntry>,
    file: usize,
    report: &mut Report,
) -> Option<TableRule> {
    let at = At::of(file, entry);
    let entry = entry.get_ref();
    let mut ok = true;
    let mut patterns = Vec::new();
    match &entry.tables {
        None => {
            report.error(
                at,
                "this [[rule.postgres.tables]] has no tables: add tables = [\"schema.table\"] (globs, such as \"billing.*\")",
            );
            ok = false;
        }
        Some(list) if list.get_ref().is_empty() => {
            report.error(
                At::of(file, list),
                "tables is empty: list \"schema.table\" globs such as \"billing.*\"",
            );
            ok = false;
        }
        Some(list) => {
            for text in list.get_ref() {
                match table_pattern(text.get_ref()) {
                    Ok(pattern) => patterns.push(pattern),
                    Err(message) => {
                        report.error(At::of(file, text), message);
                        ok = false;
                    }
                }
            }
        }
    }
    let deny = accesses(entry.deny.as_ref(), file, report);
    let approve = accesses(entry.approve.as_ref(), file, report);
    let (Some(deny), Some(approve)) = (deny, approve) else {
        return None;
    };
    if ok && deny.is_empty() && approve.is_empty() {
        report.error(
            at,
            "this [[rule.postgres.tables]] neither denies nor needs approval for anything: add deny = [\"write\"] or approve = [\"read\", \"write\"]",
        );
        ok = false;
    }
    ok.then_some(TableRule {
        patterns,
        deny,
        approve,
    })
}

fn accesses(
    list: Option<&Spanned<Vec<Spanned<String>>>>,
    file: usize,
    report: &mut Report,
) -> Option<Set> {
    let mut set = Set::EMPTY;
    let mut ok = true;
    for name in list.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
        match parse_access(name.get_ref()) {
            Ok(bit) => set.insert(bit),
            Err(message) => {
                report.error(At::of(file, name), message);
                ok = false;
            }
        }
    }
    ok.then_some(set)
}

/// `deny_functions` or `approve_functions`: `None` when a pattern is bad.
fn function_patterns(
    list: Option<&Spanned<Vec<Spanned<String>>>>,
    file: usize,
    report: &mut Report,
) -> Option<Vec<FunctionPattern>> {
    let Some(list) = list else {
        return Some(Vec::new());
    };
    // An empty list is harmless, but it says the author meant to list
    // something and did not.
    if list.get_ref().is_empty() {
        report.error(
            At::of(file, list),
            "the function list is empty: list \"schema.function\" or \"function\" globs such as \"cron.*\", or remove it",
        );
        return None;
    }
    let mut patterns = Vec::new();
    let mut ok = true;
    for text in list.get_ref() {
        match function_pattern(text.get_ref()) {
            Ok(pattern) => patterns.push(pattern),
            Err(message) => {
                report.error(At::of(file, text), message);
                ok = false;
            }
        }
    }
    ok.then_some(patterns)
}

/// `"schema.function"` globs; a name without a dot is in any schema, since
/// a function's schema is where its extension was installed.
pub(super) fn function_pattern(text: &str) -> Result<FunctionPattern, String> {
    let (schema, function) = text.split_once('.').unwrap_or(("*", text));
    if function.contains('.') {
        return Err(format!(
            "function pattern {text:?} has more than one dot: write \"schema.function\", such as \"cron.*\", or \"function\" for any schema"
        ));
    }
    if schema.is_empty() || function.is_empty() {
        return Err(format!(
            "function pattern {text:?} has an empty part: write \"schema.function\", such as \"cron.*\", or \"function\" for any schema"
        ));
    }
    if function.contains('(') {
        return Err(format!(
            "function pattern {text:?} has an argument list: give the name only; every overload is matched"
        ));
    }
    let glob = |part: &str| {
        Pattern::new(part).map_err(|e| {
            format!(
                "function pattern {text:?} is not a valid glob: {} (at character {} of {part:?})",
                e.msg,
                e.pos + 1
            )
        })
    };
    Ok(FunctionPattern {
        text: text.to_owned(),
        schema: glob(schema)?,
        function: glob(function)?,
    })
}

/// `"schema.table"` globs; a name without a dot is in schema `public`.
pub(super) fn table_pattern(text: &str) -> Result<TablePattern, String> {
    let (schema, table) = text.split_once('.').unwrap_or(("public", text));
    if table.contains('.') {
        return Err(format!(
            "table pattern {text:?} has more than one dot: write \"schema.table\", such as \"billing.*\" (the database is the target's)"
        ));
    }
    if schema.is_empty() || table.is_empty() {
        return Err(format!(
            "table pattern {text:?} has an empty part: write \"schema.table\", such as \"billing.*\", or \"table\" for schema public"
        ));
    }
    let glob = |part: &str| {
        Pattern::new(part).map_err(|e| {
            format!(
                "table pattern {text:?} is not a valid glob: {} (at character {} of {part:?})",
                e.msg,
                e.pos + 1
            )
        })
    };
    Ok(TablePattern {
        text: text.to_owned(),
        schema: glob(schema)?,
        table: glob(table)?,
    })
}
