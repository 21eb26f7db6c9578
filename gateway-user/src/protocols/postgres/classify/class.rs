//! The classifier's vocabulary: statement classes, flags, table references and the result types.

use std::fmt;
use std::str::FromStr;

/// What a statement does, coarsely; policy rules match on it (`"read"`, `"write"`…).
///
/// The mapping of every PostgreSQL statement to a class is the table in the
/// [module documentation](super).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatementClass {
    /// Reads data: SELECT, SHOW, EXPLAIN (without ANALYZE of a write), FETCH, COPY … TO STDOUT.
    Read,
    /// Changes data: INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY … FROM, SELECT INTO, DO, CALL.
    Write,
    /// Changes the schema: CREATE, ALTER, DROP, COMMENT of database objects.
    Ddl,
    /// Changes who may do what: GRANT, REVOKE, roles, row-level security, ownership.
    Dcl,
    /// Operates the server: VACUUM, ANALYZE, CHECKPOINT, ALTER SYSTEM, tablespaces, COPY … PROGRAM.
    Admin,
    /// Transaction control: BEGIN, COMMIT, ROLLBACK, SAVEPOINT, SET TRANSACTION, SET CONSTRAINTS.
    Transaction,
    /// Session housekeeping: SET, RESET, DISCARD, LISTEN, EXECUTE, DEALLOCATE, CLOSE.
    Other,
}

impl StatementClass {
    /// Every class, in declaration order (for help texts and exhaustive tests).
    pub const ALL: [StatementClass; 7] = [
        StatementClass::Read,
        StatementClass::Write,
        StatementClass::Ddl,
        StatementClass::Dcl,
        StatementClass::Admin,
        StatementClass::Transaction,
        StatementClass::Other,
    ];

    /// The name used in policy files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::Dcl => "dcl",
            StatementClass::Admin => "admin",
            StatementClass::Transaction => "transaction",
            StatementClass::Other => "other",
        }
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatementClass {
    type Err = UnknownName;

    /// Accepts the names of [`StatementClass::as_str`], ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StatementClass::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                UnknownName::new(
                    "statement class",
                    s,
                    StatementClass::ALL.map(StatementClass::as_str),
                )
            })
    }
}

/// A risky property of a statement that a policy can forbid regardless of its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    /// `DELETE` without a `WHERE` clause, at any nesting (CTE, PREPARE, EXPLAIN ANALYZE, rule action…).
    DeleteWithoutWhere,
    /// `UPDATE` without a `WHERE` clause, at any nesting.
    UpdateWithoutWhere,
    /// Any `DROP …`, `DROP OWNED`, and `ALTER TABLE … DROP COLUMN` (data is lost).
    Drop,
    /// `TRUNCATE`.
    Truncate,
    /// A data-modifying statement inside `WITH` (`WITH d AS (DELETE … RETURNING *) SELECT …`).
    DataModifyingCte,
    /// Code the gateway cannot see into: `DO`, `CALL`, `CREATE FUNCTION`/`PROCEDURE`.
    ProceduralCode,
    /// `EXPLAIN ANALYZE` of a statement that is not a read: ANALYZE executes it.
    ExplainAnalyzeWrite,
    /// `COPY … TO/FROM PROGRAM`: runs a shell command on the database server.
    CopyProgram,
    /// `COPY … TO/FROM 'file'`: reads or writes a file on the database server.
    CopyFile,
    /// A call to a function in [`DANGEROUS_FUNCTIONS`](super::DANGEROUS_FUNCTIONS), or a
    /// `set_config` that changes the role.
    DangerousFunction,
    /// Changes the session's identity: `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`,
    /// `DISCARD ALL`, `set_config('role', …)`.
    SetRole,
}

impl Flag {
    /// Every flag, in declaration order.
    pub const ALL: [Flag; 11] = [
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

    /// The name used in policy files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::DeleteWithoutWhere => "delete_without_where",
            Flag::UpdateWithoutWhere => "update_without_where",
            Flag::Drop => "drop",
            Flag::Truncate => "truncate",
            Flag::DataModifyingCte => "data_modifying_cte",
            Flag::ProceduralCode => "procedural_code",
            Flag::ExplainAnalyzeWrite => "explain_analyze_write",
            Flag::CopyProgram => "copy_program",
            Flag::CopyFile => "copy_file",
            Flag::DangerousFunction => "dangerous_function",
            Flag::SetRole => "set_role",
        }
    }

    /// The bit of this flag in a [`FlagSet`].
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Flag {
    type Err = UnknownName;

    /// Accepts the names of [`Flag::as_str`], ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flag::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownName::new("flag", s, Flag::ALL.map(Flag::as_str)))
    }
}

/// A name in a policy file that is not a class or flag; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?} (expected one of: {expected})")]
pub struct UnknownName {
    /// `"statement class"` or `"flag"`.
    pub kind: &'static str,
    /// What the policy file said.
    pub name: String,
    /// The valid names, comma-separated.
    pub expected: String,
}

impl UnknownName {
    fn new<const N: usize>(kind: &'static str, name: &str, valid: [&str; N]) -> Self {
        UnknownName {
            kind,
            name: name.to_owned(),
            expected: valid.join(", "),
        }
    }
}

/// Flags gathered while walking a statement: a bit set, so merging and
/// de-duplicating are free and the final list comes out sorted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlagSet(u16);

impl FlagSet {
    pub(crate) fn insert(&mut self, flag: Flag) {
        self.0 |= flag.bit();
    }

    pub(crate) fn contains(self, flag: Flag) -> bool {
        self.0 & flag.bit() != 0
    }

    pub(crate) fn union(&mut self, other: FlagSet) {
        self.0 |= other.0;
    }

    /// Sorted (declaration order) and without duplicates, as [`Statement::flags`] promises.
    pub(crate) fn to_vec(self) -> Vec<Flag> {
        Flag::ALL
            .into_iter()
            .filter(|f| self.contains(*f))
            .collect()
    }
}

/// How a statement touches a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Read from (FROM, JOIN, USING, subqueries, COPY … TO).
    Read,
    /// The target of a data change (INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY … FROM/SELECT INTO)
    /// or of a DDL, DCL or admin statement (CREATE/ALTER/DROP/GRANT/VACUUM/LOCK…).
    Write,
}

impl Access {
    /// `"read"` or `"write"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table (or view, sequence, index…) a statement names.
///
/// Names are as PostgreSQL resolves identifiers: unquoted ones folded to lower
/// case, quoted ones exact. `schema` is `None` when the statement does not
/// qualify the name, so the table is found through the session's
/// `search_path`; a policy on `billing.*` must decide what an unqualified
/// name means. A catalog (database) qualifier, which PostgreSQL requires to
/// be the current database, is dropped.
///
/// A statement that reaches relations it does not name says so with
/// [`TableRef::EVERY`]: as `name`, every relation of the schema (`ALTER
/// SCHEMA billing RENAME`, `DROP SCHEMA billing`, `GRANT … ON ALL TABLES IN
/// SCHEMA billing`); as schema and name, every relation anywhere (a
/// `CASCADE` that follows dependencies, `DROP OWNED`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    /// The schema the statement names, if any.
    pub schema: Option<String>,
    /// The relation's name.
    pub name: String,
    /// Whether the statement reads it or changes it.
    pub access: Access,
}

impl TableRef {
    /// The name that stands for every relation (or every schema). A
    /// relation really named `"*"` is taken for all of them: the safe
    /// direction.
    pub const EVERY: &'static str = "*";

    /// Every relation of `schema`, written.
    pub fn every_in(schema: &str) -> TableRef {
        TableRef {
            schema: Some(schema.to_owned()),
            name: TableRef::EVERY.to_owned(),
            access: Access::Write,
        }
    }

    /// Every relation of every schema, written.
    pub fn everywhere() -> TableRef {
        TableRef::every_in(TableRef::EVERY)
    }

    /// Whether this stands for every relation of its schema.
    pub fn is_every_relation(&self) -> bool {
        self.name == TableRef::EVERY
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{} ({})", self.name, self.access),
            None => write!(f, "{} ({})", self.name, self.access),
        }
    }
}

/// A function a statement calls by name, as the statement writes it
/// (folded like [`TableRef`]); `schema` is `None` for an unqualified call,
/// which the session's `search_path` resolves (after `pg_catalog`).
///
/// `attribute`: written as `x.name` or `(x).name`, which is a column of
/// `x`, or a call of `name(x)` when `x` is a row with no such column
/// (attribute notation); the parser cannot tell which, so both count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionRef {
    pub schema: Option<String>,
    pub name: String,
    pub attribute: bool,
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A statement's relation to SQL-level prepared statements, which the session
/// resolves itself: it remembers what `PREPARE` defined and applies that
/// classification when `EXECUTE` runs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Prepared {
    /// `PREPARE name AS …`: the statement's class, flags and tables are the inner statement's.
    Define(String),
    /// `EXECUTE name`, also inside `EXPLAIN ANALYZE EXECUTE` or `CREATE TABLE … AS EXECUTE`:
    /// what runs is the stored statement, not visible here.
    Execute(String),
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` (`None`).
    Deallocate(Option<String>),
}

/// The classification of one SQL statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// What the statement does.
    pub class: StatementClass,
    /// Risky properties, sorted and without duplicates.
    pub flags: Vec<Flag>,
    /// Tables the statement names, sorted and without duplicates (a table both
    /// read and written appears once per access).
    pub tables: Vec<TableRef>,
    /// Functions the statement calls by name (select list, FROM, WHERE,
    /// CALL, defaults…), sorted and without duplicates. Not those a call
    /// runs in turn, nor operators, casts or triggers.
    pub functions: Vec<FunctionRef>,
    /// A short, constant name for logs: `"SELECT"`, `"DELETE"`, `"DROP TABLE"`, `"EXPLAIN ANALYZE"`…
    pub command: &'static str,
    /// Set for PREPARE, EXECUTE and DEALLOCATE; see [`Prepared`].
    pub prepared: Option<Prepared>,
    /// Whether the statement may change `search_path`, by which unqualified
    /// table names resolve: SET/RESET of it in any spelling (`SET SCHEMA
    /// 'x'`, `SET U&"search\005fpath"`), `set_config` of it (the literal as
    /// PostgreSQL reads it, escapes and all), a SET clause of ALTER
    /// ROLE/DATABASE/FUNCTION/SYSTEM or CREATE FUNCTION, and any UPDATE of
    /// `pg_settings` (whose rule calls `set_config` for the rows it matches).
    pub sets_search_path: bool,
    /// The cursors whose current row a `WHERE CURRENT OF` changes, in
    /// order. Cursors share the portal namespace, so this names portals
    /// too (the session keeps its own out of a job's reach).
    pub current_of: Vec<String>,
    /// A setting takes a value the statement computes: `set_config` of
    /// anything but a constant or a parameter, or an UPDATE of
    /// `pg_settings`. `SHOW`, `current_setting` and `pg_stat_activity`
    /// read it back later, past any result masking.
    pub computed_setting: bool,
}

impl Statement {
    /// Whether the statement carries `flag`.
    pub fn has_flag(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }

    /// The SQL-level prepared statement this one defines, executes or deallocates.
    pub fn prepared_name(&self) -> Option<&str> {
        match self.prepared.as_ref()? {
            Prepared::Define(name) | Prepared::Execute(name) => Some(name),
            Prepared::Deallocate(name) => name.as_deref(),
        }
    }
}

/// The classification of a query string: one [`Statement`] per statement, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// The statements; empty for an empty string or one holding only comments.
    pub statements: Vec<Statement>,
}

impl Classification {
    /// The class of each statement, in order (repeats included).
    pub fn classes(&self) -> impl Iterator<Item = StatementClass> + '_ {
        self.statements.iter().map(|s| s.class)
    }

    /// Every flag of every statement (a flag carried by two statements appears twice).
    pub fn flags(&self) -> impl Iterator<Item = Flag> + '_ {
        self.statements.iter().flat_map(|s| s.flags.iter().copied())
    }

    /// Every table reference of every statement.
    pub fn tables(&self) -> impl Iterator<Item = &TableRef> + '_ {
        self.statements.iter().flat_map(|s| s.tables.iter())
    }

    /// Whether the string held no statement at all.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}
