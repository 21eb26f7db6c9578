//! Statement-level rules: the class, command name and statement-specific flags of each kind of statement.
//!
//! This is the code behind the table in the module documentation; keep the two in step.

use pg_query::protobuf::{
    AlterTableType, CopyStmt, DiscardMode, DropBehavior, ExplainStmt, GrantTargetType, ObjectType,
    PrepareStmt, RoleStmtType, TransactionStmtKind, VariableSetKind, VariableSetStmt,
};
use pg_query::{Node, NodeEnum};

use super::class::{
    Access, Flag, FlagSet, FunctionRef, Prepared, Statement, StatementClass, TableRef,
};
use super::error::ClassifyError;
use super::functions::is_identity_setting;
use super::tree;
use super::walk;

/// Classifies one top-level statement of a parse result.
pub(crate) fn classify_statement(node: &NodeEnum) -> Result<Statement, ClassifyError> {
    match node {
        NodeEnum::ExplainStmt(explain) => return classify_explain(explain),
        NodeEnum::PrepareStmt(prepare) => return classify_prepare(prepare),
        _ => {}
    }
    let outline = outline(node)?;
    let tree = tree::to_value(node).map_err(|e| ClassifyError::internal(e.to_string()))?;
    // What DDL and DCL leave behind (a view, a rule, a default, a policy)
    // runs again in later statements that do not show it.
    let defines = matches!(outline.class, StatementClass::Ddl | StatementClass::Dcl);
    let facts = walk::inspect(&tree, outline.access, defines);
    if let Some(reason) = facts.refused {
        return Err(ClassifyError::Refused { reason });
    }

    let mut flags = outline.flags;
    flags.union(facts.flags);
    // A read that contains a data change (`WITH d AS (DELETE …) SELECT`,
    // `COPY (DELETE … RETURNING *) TO STDOUT`, SELECT INTO, `SELECT
    // lo_unlink(…)`) is a write.
    let class = if facts.modifies && outline.class == StatementClass::Read {
        StatementClass::Write
    } else {
        outline.class
    };
    let mut tables = facts.tables;
    tables.extend(outline.tables);
    Ok(Statement {
        class,
        flags: flags.to_vec(),
        tables: normalize_tables(tables),
        functions: normalize_functions(facts.functions),
        command: outline.command,
        prepared: outline.prepared.or(facts.executes.map(Prepared::Execute)),
        sets_search_path: facts.search_path,
        current_of: facts.current_of,
        computed_setting: facts.computed_setting,
    })
}

/// Sorted and de-duplicated, as [`Statement::functions`] promises.
pub(crate) fn normalize_functions(mut functions: Vec<FunctionRef>) -> Vec<FunctionRef> {
    functions.sort();
    functions.dedup();
    functions
}

/// Sorted and de-duplicated, as [`Statement::tables`] promises.
pub(crate) fn normalize_tables(mut tables: Vec<TableRef>) -> Vec<TableRef> {
    tables.sort();
    tables.dedup();
    tables
}

/// What the statement's kind alone says; the walk adds what its contents say.
struct Outline {
    class: StatementClass,
    command: &'static str,
    /// What a relation named outside any query means (see `walk::inspect`).
    access: Access,
    flags: FlagSet,
    /// Relations named as plain name lists (DROP, COMMENT) or implied (RENAME, SET SCHEMA).
    tables: Vec<TableRef>,
    prepared: Option<Prepared>,
}

impl Outline {
    fn new(class: StatementClass, command: &'static str) -> Self {
        // The target of anything but a query or session statement is written.
        let access = match class {
            StatementClass::Ddl | StatementClass::Dcl | StatementClass::Admin => Access::Write,
            _ => Access::Read,
        };
        Outline {
            class,
            command,
            access,
            flags: FlagSet::default(),
            tables: Vec::new(),
            prepared: None,
        }
    }

    fn flag(mut self, flag: Flag) -> Self {
        self.flags.insert(flag);
        self
    }

    fn flag_if(self, cond: bool, flag: Flag) -> Self {
        if cond { self.flag(flag) } else { self }
    }

    fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
}

fn outline(node: &NodeEnum) -> Result<Outline, ClassifyError> {
    use StatementClass::{Admin, Dcl, Ddl, Other, Read, Transaction, Write};
    let o = Outline::new;
    Ok(match node {
        // Queries and data changes.
        NodeEnum::SelectStmt(s) => o(
            Read,
            if s.into_clause.is_some() {
                "SELECT INTO"
            } else {
                "SELECT"
            },
        ),
        NodeEnum::InsertStmt(_) => o(Write, "INSERT"),
        NodeEnum::UpdateStmt(_) => o(Write, "UPDATE"),
        NodeEnum::DeleteStmt(_) => o(Write, "DELETE"),
        NodeEnum::MergeStmt(_) => o(Write, "MERGE"),
        NodeEnum::CopyStmt(copy) => copy_outline(copy),
        NodeEnum::TruncateStmt(t) => Outline {
            // CASCADE empties every table with a foreign key to these,
            // in whatever schema.
            tables: everywhere_if(t.behavior),
            ..o(Write, "TRUNCATE")
                .flag(Flag::Truncate)
                .access(Access::Write)
        },
        NodeEnum::RefreshMatViewStmt(_) => {
            o(Write, "REFRESH MATERIALIZED VIEW").access(Access::Write)
        }
        NodeEnum::DoStmt(_) => o(Write, "DO").flag(Flag::ProceduralCode),
        NodeEnum::CallStmt(_) => o(Write, "CALL").flag(Flag::ProceduralCode),
        NodeEnum::NotifyStmt(_) => o(Write, "NOTIFY"),
        NodeEnum::LockStmt(lock) => {
            // ACCESS SHARE only blocks ACCESS EXCLUSIVE and needs SELECT; every
            // stronger mode needs UPDATE/DELETE/TRUNCATE privilege in PostgreSQL too.
            if lock.mode == pg_query::LockMode::AccessShareLock as i32 {
                o(Read, "LOCK TABLE")
            } else {
                o(Write, "LOCK TABLE").access(Access::Write)
            }
        }
        NodeEnum::VariableShowStmt(_) => o(Read, "SHOW"),
        NodeEnum::DeclareCursorStmt(_) => o(Read, "DECLARE CURSOR"),
        NodeEnum::FetchStmt(f) => o(Read, if f.ismove { "MOVE" } else { "FETCH" }),

        // Session statements.
        NodeEnum::VariableSetStmt(set) => set_outline(set),
        NodeEnum::DiscardStmt(d) => {
            // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT: back to the login role.
            o(Other, "DISCARD").flag_if(d.target == DiscardMode::DiscardAll as i32, Flag::SetRole)
        }
        NodeEnum::ListenStmt(_) => o(Other, "LISTEN"),
        NodeEnum::UnlistenStmt(_) => o(Other, "UNLISTEN"),
        NodeEnum::ClosePortalStmt(_) => o(Other, "CLOSE"),
        NodeEnum::ExecuteStmt(e) => Outline {
            prepared: Some(Prepared::Execute(e.name.clone())),
            ..o(Other, "EXECUTE")
        },
        NodeEnum::DeallocateStmt(d) => Outline {
            prepared: Some(Prepared::Deallocate(
                (!d.isall && !d.name.is_empty()).then(|| d.name.clone()),
            )),
            ..o(Other, "DEALLOCATE")
        },

        // Transactions.
        NodeEnum::TransactionStmt(t) => o(Transaction, transaction_command(t.kind)),
        NodeEnum::ConstraintsSetStmt(_) => o(Transaction, "SET CONSTRAINTS"),

        // Privileges and roles.
        NodeEnum::GrantStmt(g) => Outline {
            // `ON ALL TABLES IN SCHEMA billing`, `ON SCHEMA billing`: every
            // relation there changes hands (named tables are RangeVars,
            // which the walk finds).
            tables: if g.targtype == GrantTargetType::AclTargetAllInSchema as i32
                || g.objtype == ObjectType::ObjectSchema as i32
            {
                every_in_schemas(&g.objects)
            } else {
                Vec::new()
            },
            ..o(Dcl, if g.is_grant { "GRANT" } else { "REVOKE" })
        },
        NodeEnum::GrantRoleStmt(g) => o(Dcl, if g.is_grant { "GRANT" } else { "REVOKE" }),
        NodeEnum::AlterDefaultPrivilegesStmt(a) => Outline {
            // `IN SCHEMA billing`: the privileges of every table made there.
            tables: a
                .options
                .iter()
                .filter_map(|option| match &option.node {
                    Some(NodeEnum::DefElem(d)) if d.defname == "schemas" => d.arg.as_deref(),
                    _ => None,
                })
                .flat_map(|arg| match &arg.node {
                    Some(NodeEnum::List(list)) => every_in_schemas(&list.items),
                    _ => Vec::new(),
                })
                .collect(),
            ..o(Dcl, "ALTER DEFAULT PRIVILEGES")
        },
        NodeEnum::CreateRoleStmt(r) => o(
            Dcl,
            match RoleStmtType::try_from(r.stmt_type) {
                Ok(RoleStmtType::RolestmtUser) => "CREATE USER",
                Ok(RoleStmtType::RolestmtGroup) => "CREATE GROUP",
                _ => "CREATE ROLE",
            },
        ),
        NodeEnum::AlterRoleStmt(_) | NodeEnum::AlterRoleSetStmt(_) => o(Dcl, "ALTER ROLE"),
        NodeEnum::DropRoleStmt(_) => o(Dcl, "DROP ROLE").flag(Flag::Drop),
        NodeEnum::CreatePolicyStmt(_) => o(Dcl, "CREATE POLICY"),
        NodeEnum::AlterPolicyStmt(_) => o(Dcl, "ALTER POLICY"),
        NodeEnum::AlterOwnerStmt(a) => Outline {
            // The owner of a schema may drop or rename anything in it.
            tables: if a.object_type == ObjectType::ObjectSchema as i32 {
                every_in_schemas(a.object.as_deref().map(std::slice::from_ref).unwrap_or(&[]))
            } else {
                Vec::new()
            },
            ..o(Dcl, alter_command(a.object_type))
        },
        // Both reach whatever the role owns, in any schema.
        NodeEnum::ReassignOwnedStmt(_) => Outline {
            tables: vec![TableRef::everywhere()],
            ..o(Dcl, "REASSIGN OWNED")
        },
        NodeEnum::DropOwnedStmt(_) => Outline {
            tables: vec![TableRef::everywhere()],
            ..o(Dcl, "DROP OWNED").flag(Flag::Drop)
        },
        NodeEnum::SecLabelStmt(s) => Outline {
            tables: s.object.as_deref().map_or_else(Vec::new, |obj| {
                named_relations(s.objtype, std::slice::from_ref(obj))
            }),
            ..o(Dcl, "SECURITY LABEL")
        },
        NodeEnum::CreateUserMappingStmt(_) => o(Dcl, "CREATE USER MAPPING"),
        NodeEnum::AlterUserMappingStmt(_) => o(Dcl, "ALTER USER MAPPING"),
        NodeEnum::DropUserMappingStmt(_) => o(Dcl, "DROP USER MAPPING").flag(Flag::Drop),

        // Server administration.
        NodeEnum::VacuumStmt(v) => o(Admin, if v.is_vacuumcmd { "VACUUM" } else { "ANALYZE" }),
        NodeEnum::ClusterStmt(_) => o(Admin, "CLUSTER"),
        NodeEnum::ReindexStmt(_) => o(Admin, "REINDEX"),
        NodeEnum::CheckPointStmt(_) => o(Admin, "CHECKPOINT"),
        NodeEnum::LoadStmt(_) => o(Admin, "LOAD"),
        NodeEnum::AlterSystemStmt(_) => o(Admin, "ALTER SYSTEM"),
        NodeEnum::CreateTableSpaceStmt(_) => o(Admin, "CREATE TABLESPACE"),
        NodeEnum::AlterTableSpaceOptionsStmt(_) => o(Admin, "ALTER TABLESPACE"),
        NodeEnum::DropTableSpaceStmt(_) => o(Admin, "DROP TABLESPACE").flag(Flag::Drop),
        NodeEnum::AlterTableMoveAllStmt(_) => o(Admin, "ALTER TABLE ALL IN TABLESPACE"),
        NodeEnum::CreateSubscriptionStmt(_) => o(Admin, "CREATE SUBSCRIPTION"),
        NodeEnum::AlterSubscriptionStmt(_) => o(Admin, "ALTER SUBSCRIPTION"),
        NodeEnum::DropSubscriptionStmt(_) => o(Admin, "DROP SUBSCRIPTION").flag(Flag::Drop),

        // Schema changes.
        NodeEnum::DropStmt(d) => {
            let class = if d.remove_type == ObjectType::ObjectPolicy as i32 {
                Dcl
            } else {
                Ddl
            };
            let schema = d.remove_type == ObjectType::ObjectSchema as i32;
            let mut tables = if schema {
                every_in_schemas(&d.objects)
            } else {
                named_relations(d.remove_type, &d.objects)
            };
            // CASCADE from a type, domain, function, collation, extension…
            // drops the columns (and their data) of any table built on it.
            // From relations and schemas it drops views, indexes and
            // constraints elsewhere, no table's rows: reviewed, Rails'
            // `DROP TABLE IF EXISTS "users" CASCADE` and Prisma's `DROP
            // SCHEMA public CASCADE` must not count as writing billing.
            if !schema && !is_relation_type(d.remove_type) {
                tables.extend(everywhere_if(d.behavior));
            }
            Outline {
                tables,
                ..o(class, drop_command(d.remove_type)).flag(Flag::Drop)
            }
        }
        NodeEnum::DropdbStmt(_) => o(Ddl, "DROP DATABASE").flag(Flag::Drop),
        NodeEnum::AlterTableStmt(a) => alter_table_outline(a),
        NodeEnum::RenameStmt(r) => {
            // Renaming a column or constraint alters its table; say "ALTER TABLE".
            let object = match ObjectType::try_from(r.rename_type) {
                Ok(ObjectType::ObjectColumn | ObjectType::ObjectTabconstraint) => r.relation_type,
                _ => r.rename_type,
            };
            let class = if r.rename_type == ObjectType::ObjectRole as i32 {
                Dcl
            } else {
                Ddl
            };
            let mut outline = o(class, alter_command(object));
            if r.rename_type == ObjectType::ObjectSchema as i32 {
                // Renamed away from a table rule's schema, its tables would
                // be written under a name the rule does not cover; renamed
                // into it, another schema's tables would be.
                outline.tables.extend(
                    [&r.subname, &r.newname]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .map(|s| TableRef::every_in(s)),
                );
            }
            if let Some(rel) = r
                .relation
                .as_ref()
                .filter(|_| is_relation_type(r.rename_type))
            {
                // The new name is written too: renaming into a protected name counts.
                outline.tables.push(TableRef {
                    schema: non_empty(&rel.schemaname),
                    name: r.newname.clone(),
                    access: Access::Write,
                });
            }
            outline
        }
        NodeEnum::AlterObjectSchemaStmt(a) => {
            let mut outline = o(Ddl, alter_command(a.object_type));
            if let Some(rel) = a
                .relation
                .as_ref()
                .filter(|_| is_relation_type(a.object_type))
            {
                // Moving a table into a protected schema writes there.
                outline.tables.push(TableRef {
                    schema: non_empty(&a.newschema),
                    name: rel.relname.clone(),
                    access: Access::Write,
                });
            }
            outline
        }
        NodeEnum::CommentStmt(c) => Outline {
            tables: c.object.as_deref().map_or_else(Vec::new, |obj| {
                named_relations(c.objtype, std::slice::from_ref(obj))
            }),
            ..o(Ddl, "COMMENT")
        },
        NodeEnum::CreateFunctionStmt(f) => o(
            Ddl,
            if f.is_procedure {
                "CREATE PROCEDURE"
            } else {
                "CREATE FUNCTION"
            },
        )
        .flag(Flag::ProceduralCode),
        NodeEnum::CreateTableAsStmt(c) => o(
            Ddl,
            if c.objtype == ObjectType::ObjectMatview as i32 {
                "CREATE MATERIALIZED VIEW"
            } else if c.is_select_into {
                "SELECT INTO"
            } else {
                "CREATE TABLE AS"
            },
        ),
        NodeEnum::CreateSchemaStmt(s) => {
            // CREATE SCHEMA may carry GRANTs among its elements.
            let grants = s
                .schema_elts
                .iter()
                .any(|e| matches!(e.node, Some(NodeEnum::GrantStmt(_))));
            o(if grants { Dcl } else { Ddl }, "CREATE SCHEMA")
        }
        NodeEnum::CreateStmt(_) => o(Ddl, "CREATE TABLE"),
        NodeEnum::CreateForeignTableStmt(_) => o(Ddl, "CREATE FOREIGN TABLE"),
        NodeEnum::IndexStmt(_) => o(Ddl, "CREATE INDEX"),
        NodeEnum::ViewStmt(_) => o(Ddl, "CREATE VIEW"),
        NodeEnum::CreateSeqStmt(_) => o(Ddl, "CREATE SEQUENCE"),
        NodeEnum::AlterSeqStmt(_) => o(Ddl, "ALTER SEQUENCE"),
        NodeEnum::CreateTrigStmt(_) => o(Ddl, "CREATE TRIGGER"),
        NodeEnum::CreateEventTrigStmt(_) => o(Ddl, "CREATE EVENT TRIGGER"),
        NodeEnum::AlterEventTrigStmt(_) => o(Ddl, "ALTER EVENT TRIGGER"),
        NodeEnum::RuleStmt(_) => o(Ddl, "CREATE RULE"),
        NodeEnum::CreateExtensionStmt(_) => o(Ddl, "CREATE EXTENSION"),
        NodeEnum::AlterExtensionStmt(_) | NodeEnum::AlterExtensionContentsStmt(_) => {
            o(Ddl, "ALTER EXTENSION")
        }
        NodeEnum::CreateFdwStmt(_) => o(Ddl, "CREATE FOREIGN DATA WRAPPER"),
        NodeEnum::AlterFdwStmt(_) => o(Ddl, "ALTER FOREIGN DATA WRAPPER"),
        // A server is a connection out, as dblink's are (found in review:
        // postgres_fdw pointed back at this database reaches billing's
        // tables under names of the job's choosing).
        NodeEnum::CreateForeignServerStmt(_) => {
            o(Ddl, "CREATE SERVER").flag(Flag::DangerousFunction)
        }
        NodeEnum::AlterForeignServerStmt(_) => o(Ddl, "ALTER SERVER").flag(Flag::DangerousFunction),
        NodeEnum::ImportForeignSchemaStmt(i) => Outline {
            // Foreign tables for every table of the remote schema, which may
            // be this database's own.
            tables: [&i.remote_schema, &i.local_schema]
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(|s| TableRef::every_in(s))
                .collect(),
            ..o(Ddl, "IMPORT FOREIGN SCHEMA")
        },
        NodeEnum::CreateAmStmt(_) => o(Ddl, "CREATE ACCESS METHOD"),
        NodeEnum::CreatePlangStmt(_) => o(Ddl, "CREATE LANGUAGE"),
        NodeEnum::DefineStmt(d) => o(Ddl, create_command(d.kind)),
        NodeEnum::CreateDomainStmt(_) => o(Ddl, "CREATE DOMAIN"),
        NodeEnum::AlterDomainStmt(_) => o(Ddl, "ALTER DOMAIN"),
        NodeEnum::CreateOpClassStmt(_) => o(Ddl, "CREATE OPERATOR CLASS"),
        NodeEnum::CreateOpFamilyStmt(_) => o(Ddl, "CREATE OPERATOR FAMILY"),
        NodeEnum::AlterOpFamilyStmt(_) => o(Ddl, "ALTER OPERATOR FAMILY"),
        NodeEnum::CreateStatsStmt(_) => o(Ddl, "CREATE STATISTICS"),
        NodeEnum::AlterStatsStmt(_) => o(Ddl, "ALTER STATISTICS"),
        NodeEnum::AlterFunctionStmt(f) => o(Ddl, alter_command(f.objtype)),
        NodeEnum::AlterObjectDependsStmt(a) => o(Ddl, alter_command(a.object_type)),
        NodeEnum::AlterOperatorStmt(_) => o(Ddl, "ALTER OPERATOR"),
        NodeEnum::AlterTypeStmt(_) | NodeEnum::AlterEnumStmt(_) => o(Ddl, "ALTER TYPE"),
        NodeEnum::CompositeTypeStmt(_)
        | NodeEnum::CreateEnumStmt(_)
        | NodeEnum::CreateRangeStmt(_) => o(Ddl, "CREATE TYPE"),
        NodeEnum::CreatedbStmt(_) => o(Ddl, "CREATE DATABASE"),
        NodeEnum::AlterDatabaseStmt(_)
        | NodeEnum::AlterDatabaseRefreshCollStmt(_)
        | NodeEnum::AlterDatabaseSetStmt(_) => o(Ddl, "ALTER DATABASE"),
        NodeEnum::CreateConversionStmt(_) => o(Ddl, "CREATE CONVERSION"),
        NodeEnum::CreateCastStmt(_) => o(Ddl, "CREATE CAST"),
        NodeEnum::CreateTransformStmt(_) => o(Ddl, "CREATE TRANSFORM"),
        NodeEnum::AlterTsdictionaryStmt(_) => o(Ddl, "ALTER TEXT SEARCH DICTIONARY"),
        NodeEnum::AlterTsconfigurationStmt(_) => o(Ddl, "ALTER TEXT SEARCH CONFIGURATION"),
        NodeEnum::CreatePublicationStmt(_) => o(Ddl, "CREATE PUBLICATION"),
        NodeEnum::AlterPublicationStmt(_) => o(Ddl, "ALTER PUBLICATION"),
        NodeEnum::AlterCollationStmt(_) => o(Ddl, "ALTER COLLATION"),
        NodeEnum::ReplicaIdentityStmt(_) => o(Ddl, "ALTER TABLE"),

        // EXPLAIN and PREPARE are handled before `outline` is called. The raw
        // parser produces nothing else at the top level; anything new means
        // pg_query changed, and unknown input is refused.
        _ => {
            let kind = tree::to_value(node)
                .ok()
                .and_then(|v| v.kind())
                .unwrap_or("?");
            return Err(ClassifyError::internal(format!(
                "unsupported statement kind {kind}"
            )));
        }
    })
}

/// COPY: the direction gives the class, a server-side endpoint a flag.
fn copy_outline(copy: &CopyStmt) -> Outline {
    if copy.is_program {
        // A shell command on the database server is administration, whatever the data does.
        return Outline::new(StatementClass::Admin, "COPY").flag(Flag::CopyProgram);
    }
    let class = if copy.is_from {
        StatementClass::Write
    } else {
        StatementClass::Read
    };
    // STDIN/STDOUT leave `filename` empty; anything else is a server file.
    Outline::new(class, "COPY").flag_if(!copy.filename.is_empty(), Flag::CopyFile)
}

fn set_outline(set: &VariableSetStmt) -> Outline {
    let kind = VariableSetKind::try_from(set.kind).unwrap_or(VariableSetKind::Undefined);
    let reset = matches!(
        kind,
        VariableSetKind::VarReset | VariableSetKind::VarResetAll
    );
    if is_identity_setting(&set.name) {
        let command = match (reset, set.name.eq_ignore_ascii_case("role")) {
            (false, true) => "SET ROLE",
            (true, true) => "RESET ROLE",
            (false, false) => "SET SESSION AUTHORIZATION",
            (true, false) => "RESET SESSION AUTHORIZATION",
        };
        // The flag itself comes from the walk, which also finds SET clauses
        // inside ALTER ROLE/DATABASE/FUNCTION.
        return Outline::new(StatementClass::Other, command);
    }
    // SET TRANSACTION …, SET SESSION CHARACTERISTICS AS TRANSACTION …, SET
    // TRANSACTION SNAPSHOT: the grammar names these with upper-case
    // pseudo-settings no identifier can spell unquoted.
    if kind == VariableSetKind::VarSetMulti
        && matches!(
            set.name.as_str(),
            "TRANSACTION" | "SESSION CHARACTERISTICS" | "TRANSACTION SNAPSHOT"
        )
    {
        return Outline::new(StatementClass::Transaction, "SET TRANSACTION");
    }
    Outline::new(StatementClass::Other, if reset { "RESET" } else { "SET" })
}

fn alter_table_outline(alter: &pg_query::protobuf::AlterTableStmt) -> Outline {
    let subtypes = || {
        alter.cmds.iter().filter_map(|c| match &c.node {
            Some(NodeEnum::AlterTableCmd(cmd)) => AlterTableType::try_from(cmd.subtype).ok(),
            _ => None,
        })
    };
    // Ownership and row-level security decide who sees what: access control.
    let dcl = subtypes().any(|t| {
        matches!(
            t,
            AlterTableType::AtChangeOwner
                | AlterTableType::AtEnableRowSecurity
                | AlterTableType::AtDisableRowSecurity
                | AlterTableType::AtForceRowSecurity
                | AlterTableType::AtNoForceRowSecurity
        )
    });
    let class = if dcl {
        StatementClass::Dcl
    } else {
        StatementClass::Ddl
    };
    // `DROP COLUMN … CASCADE` drops views, indexes and constraints built on
    // the column, no other table's rows: the table itself is named.
    Outline::new(class, alter_command(alter.objtype)).flag_if(
        subtypes().any(|t| t == AlterTableType::AtDropColumn),
        Flag::Drop,
    )
}

/// Every relation anywhere, for a `CASCADE`.
fn everywhere_if(behavior: i32) -> Vec<TableRef> {
    if behavior == DropBehavior::DropCascade as i32 {
        vec![TableRef::everywhere()]
    } else {
        Vec::new()
    }
}

/// Every relation of each schema named (as `String` nodes).
fn every_in_schemas(schemas: &[Node]) -> Vec<TableRef> {
    schemas
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) if !s.sval.is_empty() => Some(TableRef::every_in(&s.sval)),
            _ => None,
        })
        .collect()
}

fn transaction_command(kind: i32) -> &'static str {
    match TransactionStmtKind::try_from(kind) {
        Ok(TransactionStmtKind::TransStmtBegin) => "BEGIN",
        Ok(TransactionStmtKind::TransStmtStart) => "START TRANSACTION",
        Ok(TransactionStmtKind::TransStmtCommit) => "COMMIT",
        Ok(TransactionStmtKind::TransStmtRollback) => "ROLLBACK",
        Ok(TransactionStmtKind::TransStmtSavepoint) => "SAVEPOINT",
        Ok(TransactionStmtKind::TransStmtRelease) => "RELEASE",
        Ok(TransactionStmtKind::TransStmtRollbackTo) => "ROLLBACK TO SAVEPOINT",
        Ok(TransactionStmtKind::TransStmtPrepare) => "PREPARE TRANSACTION",
        Ok(TransactionStmtKind::TransStmtCommitPrepared) => "COMMIT PREPARED",
        Ok(TransactionStmtKind::TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
        _ => "TRANSACTION",
    }
}

/// EXPLAIN runs its statement only with ANALYZE; without it nothing is
/// changed, so only what a plan could still evaluate (function flags) stays.
fn classify_explain(explain: &ExplainStmt) -> Result<Statement, ClassifyError> {
    let inner = inner_statement(explain.query.as_deref())?;
    if !explain_analyze(&explain.options) {
        let mut flags = FlagSet::default();
        for flag in [Flag::DangerousFunction, Flag::SetRole] {
            if inner.has_flag(flag) {
                flags.insert(flag);
            }
        }
        let tables = inner
            .tables
            .into_iter()
            .map(|t| TableRef {
                access: Access::Read,
                ..t
            })
            .collect();
        return Ok(Statement {
            class: StatementClass::Read,
            flags: flags.to_vec(),
            tables: normalize_tables(tables),
            // A plan may still evaluate calls (constant folding).
            functions: inner.functions,
            command: "EXPLAIN",
            prepared: None,
            // Kept like the function flags: a plan may still evaluate calls.
            sets_search_path: inner.sets_search_path,
            current_of: inner.current_of,
            computed_setting: inner.computed_setting,
        });
    }
    let mut flags = FlagSet::default();
    inner.flags.iter().for_each(|f| flags.insert(*f));
    // EXPLAIN ANALYZE EXECUTE: what runs is the stored statement, which the
    // session resolves through `prepared`; flagging here would guess.
    let executes_prepared =
        matches!(inner.prepared, Some(Prepared::Execute(_))) && inner.command == "EXECUTE";
    if inner.class != StatementClass::Read && !executes_prepared {
        flags.insert(Flag::ExplainAnalyzeWrite);
    }
    Ok(Statement {
        class: inner.class,
        flags: flags.to_vec(),
        tables: inner.tables,
        functions: inner.functions,
        command: "EXPLAIN ANALYZE",
        prepared: inner.prepared,
        sets_search_path: inner.sets_search_path,
        current_of: inner.current_of,
        computed_setting: inner.computed_setting,
    })
}

/// `EXPLAIN ANALYZE …` and `EXPLAIN (ANALYZE [true|on|1]) …`. PostgreSQL lets
/// the last mention win; any enabled mention counts here, which can only err
/// towards treating the statement as executed.
fn explain_analyze(options: &[Node]) -> bool {
    options.iter().any(|option| match &option.node {
        Some(NodeEnum::DefElem(def)) if def.defname.eq_ignore_ascii_case("analyze") => {
            match def.arg.as_deref().and_then(|a| a.node.as_ref()) {
                None => true,
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                Some(NodeEnum::String(s)) => {
                    !matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0")
                }
                Some(_) => true,
            }
        }
        _ => false,
    })
}

/// PREPARE defines a statement for later: classify what it will run.
fn classify_prepare(prepare: &PrepareStmt) -> Result<Statement, ClassifyError> {
    let inner = inner_statement(prepare.query.as_deref())?;
    // An EXECUTE binds the parameters to values the server computes
    // (found in review: `EXECUTE p(<a column's value>)` of `PREPARE p AS
    // SELECT set_config('my.p', $1, false)`), unlike a client's Bind.
    let computed_setting = inner.computed_setting
        || inner
            .functions
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(super::functions::SET_CONFIG));
    Ok(Statement {
        command: "PREPARE",
        prepared: Some(Prepared::Define(prepare.name.clone())),
        computed_setting,
        ..inner
    })
}

fn inner_statement(query: Option<&Node>) -> Result<Statement, ClassifyError> {
    match query.and_then(|q| q.node.as_ref()) {
        Some(node) => classify_statement(node),
        None => Err(ClassifyError::internal(
            "statement without its inner query".to_owned(),
        )),
    }
}

/// Relations named by DROP/COMMENT/SECURITY LABEL as plain name lists (`[schema,] name`):
/// table-like objects themselves, and the table of a column, trigger, rule
/// or policy (`[schema,] table, name`).
fn named_relations(object_type: i32, objects: &[Node]) -> Vec<TableRef> {
    let column = matches!(
        ObjectType::try_from(object_type),
        Ok(ObjectType::ObjectColumn
            | ObjectType::ObjectTrigger
            | ObjectType::ObjectRule
            | ObjectType::ObjectPolicy)
    );
    if !column && !is_relation_type(object_type) {
        return Vec::new();
    }
    objects
        .iter()
        .filter_map(|obj| {
            let Some(NodeEnum::List(list)) = &obj.node else {
                return None;
            };
            let mut names: Vec<&str> = list
                .items
                .iter()
                .filter_map(|n| match &n.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            if column {
                // `COMMENT ON COLUMN [schema.]table.column`, `DROP TRIGGER t ON [schema.]table`:
                // the table is written.
                names.pop();
            }
            let name = names.pop()?;
            Some(TableRef {
                schema: names.pop().map(str::to_owned),
                name: name.to_owned(),
                access: Access::Write,
            })
        })
        .collect()
}

/// Object types that live in pg_class, i.e. that a table rule can be about.
fn is_relation_type(object_type: i32) -> bool {
    matches!(
        ObjectType::try_from(object_type),
        Ok(ObjectType::ObjectTable
            | ObjectType::ObjectView
            | ObjectType::ObjectMatview
            | ObjectType::ObjectForeignTable
            | ObjectType::ObjectSequence
            | ObjectType::ObjectIndex)
    )
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// `DROP x`, `ALTER x` and `CREATE x` command names from one list of object types.
macro_rules! object_commands {
    ($($variant:ident => $name:literal,)*) => {
        fn drop_command(object_type: i32) -> &'static str {
            match ObjectType::try_from(object_type) {
                $(Ok(ObjectType::$variant) => concat!("DROP ", $name),)*
                _ => "DROP",
            }
        }
        fn alter_command(object_type: i32) -> &'static str {
            match ObjectType::try_from(object_type) {
                $(Ok(ObjectType::$variant) => concat!("ALTER ", $name),)*
                _ => "ALTER",
            }
        }
        fn create_command(object_type: i32) -> &'static str {
            match ObjectType::try_from(object_type) {
                $(Ok(ObjectType::$variant) => concat!("CREATE ", $name),)*
                _ => "CREATE",
            }
        }
    };
}

object_commands! {
    ObjectAccessMethod => "ACCESS METHOD",
    ObjectAggregate => "AGGREGATE",
    ObjectCast => "CAST",
    ObjectCollation => "COLLATION",
    ObjectConversion => "CONVERSION",
    ObjectDatabase => "DATABASE",
    ObjectDomain => "DOMAIN",
    ObjectDomconstraint => "DOMAIN",
    ObjectEventTrigger => "EVENT TRIGGER",
    ObjectExtension => "EXTENSION",
    ObjectFdw => "FOREIGN DATA WRAPPER",
    ObjectForeignServer => "SERVER",
    ObjectForeignTable => "FOREIGN TABLE",
    ObjectFunction => "FUNCTION",
    ObjectIndex => "INDEX",
    ObjectLanguage => "LANGUAGE",
    ObjectLargeobject => "LARGE OBJECT",
    ObjectMatview => "MATERIALIZED VIEW",
    ObjectOpclass => "OPERATOR CLASS",
    ObjectOperator => "OPERATOR",
    ObjectOpfamily => "OPERATOR FAMILY",
    ObjectPolicy => "POLICY",
    ObjectProcedure => "PROCEDURE",
    ObjectPublication => "PUBLICATION",
    ObjectRole => "ROLE",
    ObjectRoutine => "ROUTINE",
    ObjectRule => "RULE",
    ObjectSchema => "SCHEMA",
    ObjectSequence => "SEQUENCE",
    ObjectSubscription => "SUBSCRIPTION",
    ObjectStatisticExt => "STATISTICS",
    ObjectTable => "TABLE",
    ObjectTablespace => "TABLESPACE",
    ObjectTransform => "TRANSFORM",
    ObjectTrigger => "TRIGGER",
    ObjectTsconfiguration => "TEXT SEARCH CONFIGURATION",
    ObjectTsdictionary => "TEXT SEARCH DICTIONARY",
    ObjectTsparser => "TEXT SEARCH PARSER",
    ObjectTstemplate => "TEXT SEARCH TEMPLATE",
    ObjectType => "TYPE",
    ObjectUserMapping => "USER MAPPING",
    ObjectView => "VIEW",
}
