//! Deep inspection of one statement's parse tree: tables, nested data changes, function calls.
//!
//! The walk descends into every field of every node (see `tree.rs`), so a
//! DELETE in a CTE, a function in a DEFAULT expression or a table in a
//! subquery of a rule action is found wherever the grammar allows it.
//! Statement-level meaning (class, command, COPY/EXPLAIN options) is
//! decided in `statement.rs`.

use super::class::{Access, Flag, FlagSet, FunctionRef, TableRef};
use super::functions::{
    SET_CONFIG, SETVAL, is_dangerous_function, is_identity_setting, is_search_path,
    is_settings_view, is_writing_function, lexer_setting_refusal,
};
use super::tree::Value;
use pg_query::protobuf::{
    BoolExprType, CmdType, MergeMatchKind, OnConflictAction, VariableSetKind,
};

/// What the walk found in one statement.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub(crate) tables: Vec<TableRef>,
    pub(crate) functions: Vec<FunctionRef>,
    pub(crate) flags: FlagSet,
    /// An INSERT, UPDATE, DELETE or MERGE, a SELECT INTO, or a call of a
    /// function that changes data (`functions::WRITING_FUNCTIONS`) appears somewhere.
    pub(crate) modifies: bool,
    /// The prepared statement an `EXECUTE` inside runs.
    pub(crate) executes: Option<String>,
    /// `search_path` may change (see `Statement::sets_search_path`).
    pub(crate) search_path: bool,
    /// The cursors `WHERE CURRENT OF` names, in order.
    pub(crate) current_of: Vec<String>,
    /// See `Statement::computed_setting`.
    pub(crate) computed_setting: bool,
    /// Why the statement must be refused outright (see `functions::lexer_setting_refusal`).
    pub(crate) refused: Option<&'static str>,
}

/// Walks `stmt`. `access` is what a relation named outside any query means:
/// `Write` for the target of DDL/DCL/admin statements and TRUNCATE, `Read`
/// otherwise (queries decide for their own relations). `defines`: the
/// statement leaves behind something later statements run (DDL, DCL).
pub(crate) fn inspect(stmt: &Value, access: Access, defines: bool) -> Facts {
    let mut walker = Walker {
        facts: Facts::default(),
        ctes: Vec::new(),
        access,
        in_cte: 0,
        in_view: 0,
        defines,
    };
    walker.visit(stmt);
    walker.facts
}

struct Walker<'t> {
    facts: Facts,
    /// CTE names visible at this point, innermost last. Only an unqualified
    /// name read in a FROM-like position can refer to one.
    ctes: Vec<&'t str>,
    access: Access,
    /// How many CTE bodies enclose the current node.
    in_cte: usize,
    /// How many view definitions enclose the current node.
    in_view: usize,
    /// See [`inspect`].
    defines: bool,
}

impl<'t> Walker<'t> {
    fn visit(&mut self, v: &'t Value) {
        match v.kind() {
            Some("SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt") => {
                self.query(v)
            }
            Some("RangeVar") => self.relation(v, self.access),
            Some("IntoClause") => {
                // SELECT INTO / CREATE TABLE AS create the table they name.
                self.relation(v.get("rel"), Access::Write);
                self.children(v, &["rel"]);
            }
            Some("CopyStmt") => {
                // COPY names a real table, never a CTE: FROM fills it, TO reads it.
                let access = if v.get("is_from").as_bool() {
                    Access::Write
                } else {
                    Access::Read
                };
                self.table(v.get("relation"), access);
                self.children(v, &["relation"]);
            }
            Some("CommonTableExpr") => {
                // Reached only outside `query` (which scopes CTEs itself); still count the nesting.
                self.in_cte += 1;
                self.children(v, &[]);
                self.in_cte -= 1;
            }
            Some("FuncCall") => {
                self.function(v);
                self.children(v, &[]);
            }
            // `i.purge` and `(i).purge` call `purge(i)` when `i` is a row
            // without such a column (found in review: a deny_functions
            // rule on `purge` never saw it).
            Some("ColumnRef") => {
                if let [_, .., last] = v.get("fields").items()
                    && let Some(name) = last.as_str()
                {
                    self.attribute(name);
                }
                self.children(v, &[]);
            }
            Some("A_Indirection" | "AIndirection") => {
                for name in v
                    .get("indirection")
                    .items()
                    .iter()
                    .filter_map(Value::as_str)
                {
                    self.attribute(name);
                }
                self.children(v, &[]);
            }
            // Statements that bind a function to something later statements
            // call without naming it: an operator, an aggregate, a type's
            // I/O, a cast, a trigger (found in review: `CREATE OPERATOR ##
            // (RIGHTARG = text, FUNCTION = pg_read_file)`, then `SELECT ##
            // '/etc/passwd'`).
            Some("DefineStmt") => self.bound_by_options(v, "definition"),
            Some("AlterOperatorStmt" | "AlterTypeStmt") => self.bound_by_options(v, "options"),
            Some("CreateRangeStmt") => self.bound_by_options(v, "params"),
            Some("CreateFdwStmt" | "AlterFdwStmt") => self.bound_by_options(v, "func_options"),
            Some("CreateCastStmt") => self.bound_by_fields(v, &["func"]),
            Some("CreateTransformStmt") => self.bound_by_fields(v, &["fromsql", "tosql"]),
            Some("CreateOpClassItem")
                if v.get("itemtype").as_int() == Some(OPCLASS_ITEM_FUNCTION) =>
            {
                self.bound_by_fields(v, &["name"])
            }
            Some("CreateConversionStmt") => self.bound_by_fields(v, &["func_name"]),
            Some("CreateTrigStmt" | "CreateEventTrigStmt") => {
                self.bound_by_fields(v, &["funcname"])
            }
            Some("CreatePLangStmt") => {
                self.bound_by_fields(v, &["plhandler", "plinline", "plvalidator"])
            }
            Some("CreateAmStmt") => self.bound_by_fields(v, &["handler_name"]),
            Some("VariableSetStmt") => {
                // SET ROLE at the top, but also `ALTER ROLE|DATABASE … SET role`
                // and `CREATE FUNCTION … SET role = …`, which switch later sessions or calls.
                if let Some(name) = v.get("name").as_str() {
                    if is_identity_setting(name) {
                        self.facts.flags.insert(Flag::SetRole);
                    }
                    // `SET SCHEMA 'x'` is parsed as this name too.
                    if is_search_path(name) {
                        self.facts.search_path = true;
                    }
                    let value = set_value(v);
                    self.refuse(lexer_setting_refusal(
                        name,
                        value.as_ref().map(|s| s.as_deref()),
                    ));
                }
                self.children(v, &[]);
            }
            Some("CurrentOfExpr") => {
                if let Some(name) = v.get("cursor_name").as_str() {
                    self.facts.current_of.push(name.to_owned());
                }
                self.children(v, &[]);
            }
            Some("ExecuteStmt") => {
                if self.facts.executes.is_none() {
                    self.facts.executes = v.get("name").as_str().map(str::to_owned);
                }
                self.children(v, &[]);
            }
            // `FOR UPDATE OF x` names FROM items (often aliases), not more tables.
            Some("LockingClause") => self.children(v, &["locked_rels"]),
            // PostgreSQL makes a simple view updatable: writes through it
            // reach its table under the view's name, which the job chose
            // and no table rule covers (found in review: a DELETE through
            // `CREATE TEMP VIEW inv AS SELECT * FROM billing.invoices`). So
            // what a view reads counts as written, and so does what a
            // `_RETURN` rule (ON SELECT, which makes a table a view) reads.
            Some("ViewStmt") => self.through_view(v, "query"),
            Some("RuleStmt") if v.get("event").as_int() == Some(CmdType::CmdSelect as i64) => {
                self.through_view(v, "actions")
            }
            _ => self.children(v, &[]),
        }
    }

    /// A view's definition: the relations its `query` field reads count
    /// as written.
    fn through_view(&mut self, v: &'t Value, query: &str) {
        self.children(v, &[query]);
        self.in_view += 1;
        self.visit(v.get(query));
        self.in_view -= 1;
    }

    fn children(&mut self, v: &'t Value, skip: &[&str]) {
        for (key, child) in v.fields() {
            if !skip.contains(&key) {
                self.visit(child);
            }
        }
    }

    /// SELECT, INSERT, UPDATE, DELETE, MERGE: their WITH scope, their target, their WHERE.
    fn query(&mut self, v: &'t Value) {
        let saved_ctes = self.ctes.len();
        let saved_access = self.access;
        // Inside a query every relation is read unless it is the query's target.
        self.access = Access::Read;

        let with = v.get("with_clause");
        if !with.is_null() {
            let ctes = with.get("ctes").items();
            let names: Vec<&'t str> = ctes
                .iter()
                .filter_map(|c| c.get("ctename").as_str())
                .collect();
            let recursive = with.get("recursive").as_bool();
            for (i, cte) in ctes.iter().enumerate() {
                // A plain WITH sees only the CTEs before it; WITH RECURSIVE sees them all.
                let visible = if recursive {
                    names.len()
                } else {
                    i.min(names.len())
                };
                self.ctes.truncate(saved_ctes);
                self.ctes.extend_from_slice(&names[..visible]);
                self.visit(cte);
            }
            self.ctes.truncate(saved_ctes);
            self.ctes.extend_from_slice(&names);
        }

        let kind = v.kind().unwrap_or_default();
        let mut skip = vec!["with_clause"];
        match kind {
            "SelectStmt" => {
                if !v.get("into_clause").is_null() {
                    self.facts.modifies = true;
                }
            }
            _ => {
                self.facts.modifies = true;
                if self.in_cte > 0 {
                    self.facts.flags.insert(Flag::DataModifyingCte);
                }
                // The target of a data change is always a table, even if a CTE has its name.
                let target = v.get("relation");
                self.table(target, Access::Write);
                // `ON CONFLICT … DO UPDATE` reads the row it conflicts with
                // (`SET name = customers.email`): the target is read too.
                if kind == "InsertStmt"
                    && v.get("on_conflict_clause").get("action").as_int()
                        == Some(OnConflictAction::OnconflictUpdate as i64)
                {
                    self.table(target, Access::Read);
                }
                if kind == "UpdateStmt"
                    && let Some(name) = target.get("relname").as_str()
                    && is_settings_view(target.get("schemaname").as_str(), name)
                {
                    self.facts.search_path = true;
                    self.facts.computed_setting = true;
                }
                skip.push("relation");
                // `WHERE true` or `WHERE 1 = 1` takes every row, as no WHERE does.
                let changed = Changed::of(v);
                let no_where = !filters_rows(v.get("where_clause"), &changed);
                match kind {
                    "DeleteStmt" if no_where => self.facts.flags.insert(Flag::DeleteWithoutWhere),
                    "UpdateStmt" if no_where => self.facts.flags.insert(Flag::UpdateWithoutWhere),
                    "MergeStmt" => self.merge_actions(v, &changed),
                    _ => {}
                }
            }
        }
        self.children(v, &skip);

        self.ctes.truncate(saved_ctes);
        self.access = saved_access;
    }

    /// MERGE's UPDATE and DELETE actions that reach every row of the target:
    /// `WHEN MATCHED` under an `ON` that does not filter (`ON true`), and
    /// `WHEN NOT MATCHED BY SOURCE`, which takes every target row the
    /// job's own source leaves out (all of them, for an empty source);
    /// either without an `AND` condition of its own that filters.
    fn merge_actions(&mut self, merge: &Value, changed: &Changed<'_>) {
        let on_filters = filters_rows(merge.get("join_condition"), changed);
        for clause in merge.get("merge_when_clauses").items() {
            let kind = clause.get("match_kind").as_int().unwrap_or_default();
            let every_row = match kind {
                k if k == MergeMatchKind::MergeWhenMatched as i64 => !on_filters,
                k if k == MergeMatchKind::MergeWhenNotMatchedBySource as i64 => true,
                _ => false,
            };
            if !every_row || filters_rows(clause.get("condition"), changed) {
                continue;
            }
            let command = clause.get("command_type").as_int().unwrap_or_default();
            if command == CmdType::CmdDelete as i64 {
                self.facts.flags.insert(Flag::DeleteWithoutWhere);
            } else if command == CmdType::CmdUpdate as i64 {
                self.facts.flags.insert(Flag::UpdateWithoutWhere);
            }
        }
    }

    /// A relation in a position where it may name a CTE (when read).
    fn relation(&mut self, v: &'t Value, access: Access) {
        let cte = access == Access::Read
            && v.get("schemaname").as_str().is_none()
            && v.get("relname")
                .as_str()
                .is_some_and(|name| self.ctes.contains(&name));
        if cte {
            return;
        }
        let access = if self.in_view > 0 {
            Access::Write
        } else {
            access
        };
        self.table(v, access);
    }

    /// A relation that is certainly a table (or view, sequence…).
    fn table(&mut self, v: &Value, access: Access) {
        if v.kind() != Some("RangeVar") {
            return;
        }
        if let Some(name) = v.get("relname").as_str() {
            // A view, rule or default over pg_settings lets a later UPDATE
            // that never names it call set_config (found in review: an
            // updatable view, then `UPDATE v SET setting = 'billing' WHERE
            // name = 'search_' || 'path'`).
            if self.defines && is_settings_view(v.get("schemaname").as_str(), name) {
                self.refuse(Some(
                    "a schema object over pg_settings would let later statements change settings (search_path, role) unseen",
                ));
            }
            self.facts.tables.push(TableRef {
                schema: v.get("schemaname").as_str().map(str::to_owned),
                name: name.to_owned(),
                access,
            });
        }
    }

    /// Functions named by the `DefElem`s of list field `field` whose names
    /// say they take one (`FUNCTION =`, `SFUNC =`, `INPUT =`, `HANDLER`…).
    fn bound_by_options(&mut self, v: &'t Value, field: &str) {
        for option in v.get(field).items() {
            let takes_function = option.get("defname").as_str().is_some_and(|name| {
                FUNCTION_OPTIONS
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(name))
            });
            if takes_function {
                self.bound(option.get("arg"));
            }
        }
        self.children(v, &[]);
    }

    /// Functions named by fields `fields` (an `ObjectWithArgs` or a name list).
    fn bound_by_fields(&mut self, v: &'t Value, fields: &[&str]) {
        for field in fields {
            self.bound(v.get(field));
        }
        self.children(v, &[]);
    }

    /// A function bound for later calls, named as PostgreSQL's
    /// `defGetQualifiedName` takes it: a type name, a name list, an
    /// `ObjectWithArgs`, or one string. Checked as a call would be; a
    /// function that writes or sets settings is worse here, since its
    /// later calls will not show it.
    fn bound(&mut self, arg: &Value) {
        let names: Vec<&str> = match arg.kind() {
            Some("TypeName") => arg
                .get("names")
                .items()
                .iter()
                .filter_map(Value::as_str)
                .collect(),
            Some("ObjectWithArgs") => arg
                .get("objname")
                .items()
                .iter()
                .filter_map(Value::as_str)
                .collect(),
            Some("List") => arg
                .get("items")
                .items()
                .iter()
                .filter_map(Value::as_str)
                .collect(),
            Some("String") => arg.as_str().into_iter().collect(),
            _ => arg.items().iter().filter_map(Value::as_str).collect(),
        };
        let Some((name, qualifiers)) = names.split_last() else {
            return;
        };
        self.facts.functions.push(FunctionRef {
            schema: qualifiers.last().map(|s| (*s).to_owned()),
            name: (*name).to_owned(),
            attribute: false,
        });
        if is_dangerous_function(name) || is_writing_function(name) {
            self.facts.flags.insert(Flag::DangerousFunction);
        }
        if name.eq_ignore_ascii_case(SET_CONFIG) {
            self.facts.flags.insert(Flag::DangerousFunction);
            self.facts.flags.insert(Flag::SetRole);
            self.refuse(Some(
                "set_config bound to an operator, aggregate, type or trigger would change settings (role, search_path) unseen",
            ));
        }
    }

    /// A name after a dot in an expression: a column, or a call in
    /// attribute notation.
    /// `x.name`: a column, or a call of `name(x)` (found in review: `('…'
    /// ::text).ts_stat` ran a query and `(424242::oid).lo_unlink` a write
    /// that the same calls by name were refused). A column named like a
    /// dangerous or writing function counts as the call: the statement's
    /// text cannot tell them apart.
    fn attribute(&mut self, name: &str) {
        self.facts.functions.push(FunctionRef {
            schema: None,
            name: name.to_owned(),
            attribute: true,
        });
        if is_writing_function(name) {
            self.facts.modifies = true;
        }
        if is_dangerous_function(name) {
            self.facts.flags.insert(Flag::DangerousFunction);
        }
    }

    fn refuse(&mut self, reason: Option<&'static str>) {
        if self.facts.refused.is_none() {
            self.facts.refused = reason;
        }
    }

    fn function(&mut self, call: &Value) {
        let Some((name, qualifiers)) = call.get("funcname").items().split_last() else {
            return;
        };
        let Some(name) = name.as_str() else {
            return;
        };
        // `db.schema.f` names the current database; the schema is what counts.
        self.facts.functions.push(FunctionRef {
            schema: qualifiers.last().and_then(Value::as_str).map(str::to_owned),
            name: name.to_owned(),
            attribute: false,
        });
        if is_writing_function(name) {
            self.facts.modifies = true;
        }
        if name.eq_ignore_ascii_case(SETVAL) {
            // `setval('billing.invoice_seq', 1)` writes that sequence, which
            // a table rule may cover. A name that is not a constant
            // (`'billing' || '.inv_seq'`, `$1`) may be any sequence, so it
            // writes every table (found in review: it named none, and
            // passed a `billing.*` rule).
            let sequence = function_arg(call, 0, "");
            let table = match sequence
                .and_then(string_constant)
                .and_then(relation_name)
                // `setval(pg_get_serial_sequence('items', 'id'), 1)`, a
                // common fixture reset: the sequence of that table's
                // column, which counts as writing the table.
                .or_else(|| sequence.and_then(serial_sequence_table))
            {
                Some((schema, name)) => TableRef {
                    schema,
                    name,
                    access: Access::Write,
                },
                None => TableRef::everywhere(),
            };
            self.facts.tables.push(table);
        }
        if is_dangerous_function(name) {
            self.facts.flags.insert(Flag::DangerousFunction);
        } else if name.eq_ignore_ascii_case(SET_CONFIG) {
            self.set_config(call);
        }
    }

    /// `set_config(setting_name, new_value, is_local)`: flags role changes and
    /// refuses lexer-changing ones, like SET. A setting name that is not a
    /// string constant (a parameter, an expression) could be any of them.
    fn set_config(&mut self, call: &Value) {
        let setting = function_arg(call, 0, "setting_name").map(string_constant);
        let Some(Some(setting)) = setting else {
            self.facts.flags.insert(Flag::DangerousFunction);
            self.facts.flags.insert(Flag::SetRole);
            self.refuse(Some(
                "set_config with a setting name that is not a constant",
            ));
            return;
        };
        if is_identity_setting(setting) {
            self.facts.flags.insert(Flag::DangerousFunction);
            self.facts.flags.insert(Flag::SetRole);
        }
        if is_search_path(setting) {
            self.facts.search_path = true;
        }
        let value = function_arg(call, 1, "new_value");
        if !value.is_some_and(constant_or_parameter) {
            self.facts.computed_setting = true;
        }
        let value = value.and_then(string_constant);
        self.refuse(lexer_setting_refusal(setting, Some(value)));
    }
}

/// `CreateOpClassItem.itemtype` of a support function (`OPCLASS_ITEM_FUNCTION`).
const OPCLASS_ITEM_FUNCTION: i64 = 2;

/// Options of CREATE OPERATOR / AGGREGATE / TYPE / TEXT SEARCH … and
/// FOREIGN DATA WRAPPER whose value is a function PostgreSQL calls later.
const FUNCTION_OPTIONS: &[&str] = &[
    // Operators.
    "function",
    "procedure",
    "restrict",
    "join",
    // Aggregates (old and new syntax, moving-aggregate variants).
    "sfunc",
    "sfunc1",
    "finalfunc",
    "combinefunc",
    "serialfunc",
    "deserialfunc",
    "msfunc",
    "minvfunc",
    "mfinalfunc",
    // Base and range types.
    "input",
    "output",
    "receive",
    "send",
    "typmod_in",
    "typmod_out",
    "analyze",
    "subscript",
    "subtype_diff",
    "canonical",
    // Text search parsers and templates.
    "start",
    "gettoken",
    "end",
    "headline",
    "lextypes",
    "init",
    "lexize",
    // Foreign data wrappers.
    "handler",
    "validator",
];

/// Whether a WHERE (or MERGE `ON`) condition can leave rows out. A
/// condition that names no column (`true`, `1 = 1`, `$1`, `NOT false`,
/// `current_user = 'ci'`) is the same for every row, so it takes all of
/// them or none, and an `OR` with such an arm takes all rows whenever that
/// arm is true: both count as no WHERE. `WHERE CURRENT OF` takes one row.
/// Deliberately simple: any column anywhere (even in a subquery, even
/// `id = id`) counts as a filter; this catches the usual ways of writing
/// "every row" past a no-WHERE check, not every tautology.
fn filters_rows(condition: &Value, changed: &Changed<'_>) -> bool {
    match condition.kind() {
        Some("CurrentOfExpr") => true,
        Some("BoolExpr") => {
            let args = condition.get("args").items();
            let op = condition.get("boolop").as_int().unwrap_or_default();
            if op == BoolExprType::OrExpr as i64 {
                !args.is_empty() && args.iter().all(|a| filters_rows(a, changed))
            } else if op == BoolExprType::AndExpr as i64 {
                args.iter().any(|a| filters_rows(a, changed))
            } else {
                changed.named_in(condition, false)
            }
        }
        _ => changed.named_in(condition, false),
    }
}

/// Whether `v` (a subquery) has a relation or alias called `name`
/// anywhere in it: to be safe, deeper ones count too.
fn binds(v: &Value, name: &str) -> bool {
    let named = match v.kind() {
        Some("RangeVar") => v.get("relname").as_str() == Some(name),
        Some("Alias") => v.get("aliasname").as_str() == Some(name),
        Some("CommonTableExpr") => v.get("ctename").as_str() == Some(name),
        _ => implicitly_named(v, name),
    };
    named || v.fields().any(|(_, child)| binds(child, name))
}

/// Whether `v` is a FROM item without an alias that PostgreSQL still
/// lets a query refer to as `name`: `FROM t()` is referable as `t` (found
/// in review: `WHERE EXISTS (SELECT 1 FROM t() WHERE t.id = 1)`, with a
/// job's own function `t`, filtered nothing of the target yet counted).
fn implicitly_named(v: &Value, name: &str) -> bool {
    if !v.get("alias").is_null() {
        return false;
    }
    match v.kind() {
        // `ROWS FROM (a(), b())` takes the name of its first function.
        Some("RangeFunction") => match v.get("functions").items().first() {
            Some(pair) => match pair.get("items").items().first() {
                Some(call) => may_be_named(call, name),
                None => true,
            },
            None => true,
        },
        Some("RangeTableFunc") => name == "xmltable",
        Some("JsonTable") => name == "json_table",
        // PostgreSQL 16 and later accept a subquery without an alias and
        // call it this (pg_dump writes view definitions qualifying its
        // columns with it).
        Some("RangeSubselect") => name == "unnamed_subquery",
        _ => false,
    }
}

/// Whether a function in FROM may take `name` as its implicit alias,
/// which PostgreSQL derives as it does a result column's name
/// (`FigureColname`). Only the common shapes are followed; for any other
/// expression the name is not worth guessing, so it may be any.
fn may_be_named(expr: &Value, name: &str) -> bool {
    let last = |list: &Value| list.items().last().and_then(Value::as_str) == Some(name);
    match expr.kind() {
        Some("FuncCall") => last(expr.get("funcname")),
        // `x.*` is named `x`: the last name, a star skipped.
        Some("ColumnRef") => {
            let fields = expr.get("fields").items();
            fields.iter().rev().find_map(Value::as_str) == Some(name)
        }
        Some("A_Const" | "AConst") => false,
        // `CAST(x AS t)` takes the name of `x` when it has one, else the type's.
        Some("TypeCast") => {
            may_be_named(expr.get("arg"), name) || last(expr.get("type_name").get("names"))
        }
        _ => true,
    }
}

/// Whether a top-level FROM item, or one joined in it, is referable as
/// `name` without an alias saying so (see `implicitly_named`).
fn in_scope_implicitly(item: &Value, name: &str) -> bool {
    match item.kind() {
        Some("JoinExpr") => {
            in_scope_implicitly(item.get("larg"), name)
                || in_scope_implicitly(item.get("rarg"), name)
        }
        _ => implicitly_named(item, name),
    }
}

/// The table a DELETE, UPDATE or MERGE changes, as its WHERE (or ON) can
/// name its columns. A condition over other relations' columns only
/// (`DELETE FROM t USING (VALUES (1)) v(k) WHERE v.k = 1`) takes every row
/// of it (found in review), so only its own columns count.
struct Changed<'t> {
    /// The name its columns are qualified with: its alias, or its own
    /// name when it has none (an alias hides the name).
    name: Option<&'t str>,
    /// The schema it was named with, when it has no alias: a column
    /// qualified by schema and table (`other.t.id`) is its own only with
    /// that schema, since PostgreSQL lets `public.t` and `other.t` sit
    /// side by side (found in review: `DELETE FROM public.t USING other.t
    /// WHERE other.t.id = 1` took every row unflagged).
    schema: Option<&'t str>,
    /// Other relations are in scope (USING, FROM, MERGE's source), so an
    /// unqualified column may be one of theirs: without the catalog the
    /// gateway cannot tell, and counts only qualified ones.
    joined: bool,
}

impl<'t> Changed<'t> {
    fn of(statement: &'t Value) -> Self {
        let relation = statement.get("relation");
        let name = relation
            .get("alias")
            .get("aliasname")
            .as_str()
            .or_else(|| relation.get("relname").as_str());
        let aliased = relation.get("alias").get("aliasname").as_str().is_some();
        let schema = relation.get("schemaname").as_str().filter(|_| !aliased);
        let others = [
            statement.get("using_clause").items(),
            statement.get("from_clause").items(),
            std::slice::from_ref(statement.get("source_relation")),
        ];
        let joined = others
            .iter()
            .flat_map(|items| *items)
            .any(|item| !item.is_null());
        // PostgreSQL refuses a FROM item whose implicit name is the
        // target's (`DELETE FROM public.t USING other.t() WHERE t.id = 1`:
        // "specified more than once"); should it ever accept one, `t.id`
        // could be the function's, so the name then counts for nothing.
        let hidden = name.is_some_and(|name| {
            others
                .iter()
                .flat_map(|items| *items)
                .any(|item| in_scope_implicitly(item, name))
        });
        Changed {
            name: name.filter(|_| !hidden),
            schema,
            joined,
        }
    }

    /// Whether `v` names a column of this table. In a subquery an
    /// unqualified name is first the subquery's own relations' column, so
    /// there only a qualified one counts.
    fn named_in(&self, v: &Value, nested: bool) -> bool {
        match v.kind() {
            Some("ColumnRef") => {
                let parts = v.get("fields").items();
                match parts {
                    [_] => !self.joined && !nested,
                    [qualifier, _] => {
                        qualifier.as_str().is_some() && qualifier.as_str() == self.name
                    }
                    [.., schema, qualifier, _] => {
                        self.schema.is_some()
                            && schema.as_str() == self.schema
                            && qualifier.as_str() == self.name
                    }
                    [] => false,
                }
            }
            // A subquery that has a relation of the same name (or alias)
            // names its own rows by it: `WHERE EXISTS (SELECT 1 FROM
            // customers t WHERE t.id = 1)` filters nothing of `t` (found
            // in review).
            Some("SubLink") => {
                let subquery = v.get("subselect");
                self.named_in(v.get("testexpr"), nested)
                    || (!self.name.is_some_and(|name| binds(subquery, name))
                        && self.named_in(subquery, true))
            }
            _ => v.fields().any(|(_, child)| self.named_in(child, nested)),
        }
    }
}

/// `schema.name` from a `regclass` literal, as PostgreSQL reads one
/// (`stringToQualifiedNameList`): dot-separated, `"…"` quoted with `""`
/// for a quote, unquoted parts folded to lower case (ASCII only, as in a
/// UTF-8 database); a catalog qualifier is dropped, like a `RangeVar`'s.
/// `None` when the text is no valid name.
fn relation_name(text: &str) -> Option<(Option<String>, String)> {
    let mut parts = Vec::new();
    let mut chars = text.trim_matches(is_space_char).chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
            while chars.next_if(|&c| is_space_char(c)).is_some() {}
        } else {
            while let Some(c) = chars.next_if(|&c| c != '.' && !is_space_char(c)) {
                part.push(c.to_ascii_lowercase());
            }
            while chars.next_if(|&c| is_space_char(c)).is_some() {}
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => while chars.next_if(|&c| is_space_char(c)).is_some() {},
            Some(_) => return None,
        }
    }
    let name = parts.pop()?;
    match parts.len() {
        0 => Some((None, name)),
        1 | 2 => Some((parts.pop(), name)),
        _ => None,
    }
}

fn is_space_char(c: char) -> bool {
    u8::try_from(c).is_ok_and(super::lex::is_space)
}

/// Argument `position` of a call, or the one passed as `name => …`.
fn function_arg<'v>(call: &'v Value, position: usize, name: &str) -> Option<&'v Value> {
    let args = call.get("args").items();
    if let Some(named) = args
        .iter()
        .find(|a| a.kind() == Some("NamedArgExpr") && a.get("name").as_str() == Some(name))
    {
        return Some(named.get("arg"));
    }
    // Positional arguments come before named ones.
    args.get(position)
        .filter(|a| a.kind() != Some("NamedArgExpr"))
}

/// The value a SET assigns: `None` for RESET/DEFAULT (back to the session's
/// default), `Some(None)` for a value that is not one string or number
/// constant, `Some(Some(text))` otherwise.
fn set_value(set: &Value) -> Option<Option<String>> {
    let kind = set
        .get("kind")
        .as_int()
        .and_then(|k| i32::try_from(k).ok())
        .and_then(|k| VariableSetKind::try_from(k).ok());
    match kind {
        Some(
            VariableSetKind::VarSetDefault
            | VariableSetKind::VarReset
            | VariableSetKind::VarResetAll,
        ) => None,
        Some(VariableSetKind::VarSetValue) => match set.get("args").items() {
            [one] => Some(constant_text(one)),
            _ => Some(None),
        },
        // FROM CURRENT and the multi-settings carry no single constant.
        _ => Some(None),
    }
}

/// A constant's text: `'on'`, `on`, `1`, `true`.
fn constant_text(v: &Value) -> Option<String> {
    if let Some(s) = string_constant(v) {
        return Some(s.to_owned());
    }
    match v.kind() {
        Some("A_Const" | "AConst") => {
            let val = v.get("val");
            match val.kind() {
                // protobuf omits a zero `ival`.
                Some("Integer") => Some(val.get("ival").as_int().unwrap_or(0).to_string()),
                Some("Boolean") => Some(val.get("boolval").as_bool().to_string()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The text of a string literal (`'role'`, also `'role'::text`), if that is what `v` is.
/// The table of `pg_get_serial_sequence('table', 'column')` with a
/// constant table name, as `relation_name` reads it.
fn serial_sequence_table(v: &Value) -> Option<(Option<String>, String)> {
    if v.kind() != Some("FuncCall") {
        return None;
    }
    let (name, qualifiers) = v.get("funcname").items().split_last()?;
    let catalog = qualifiers
        .last()
        .is_none_or(|q| q.as_str() == Some("pg_catalog"));
    if !catalog || name.as_str() != Some("pg_get_serial_sequence") {
        return None;
    }
    function_arg(v, 0, "")
        .and_then(string_constant)
        .and_then(relation_name)
}

/// A constant or a bind parameter (`$1`), cast or not: a value the job
/// wrote, not one the statement computes.
fn constant_or_parameter(v: &Value) -> bool {
    match v.kind() {
        Some("A_Const" | "AConst" | "ParamRef") => true,
        Some("TypeCast") => constant_or_parameter(v.get("arg")),
        _ => false,
    }
}

fn string_constant(v: &Value) -> Option<&str> {
    match v.kind() {
        Some("A_Const" | "AConst") => v.get("sval").as_str().or_else(|| v.get("val").as_str()),
        Some("TypeCast") => string_constant(v.get("arg")),
        _ => None,
    }
}
