//! What one PostgreSQL session may do: the roles it may log in as, and the verdict on each statement.
use std::{fmt, sync::Arc};

use glob::MatchOptions;

use crate::protocols::postgres::{
    classify::{Classification, FunctionRef, Statement, TableRef},
    search_path::SearchPath,
};

use super::{
    approval::ApprovalRule,
    eval::DEFAULT_DENY,
    postgres::{FunctionPattern, PostgresRule, PostgresTarget, TablePattern},
    statement_kinds::{
        ACCESS_NAMES, CLASS_NAMES, FLAG_NAMES, Set, access_bit, class_bit, flag_bit,
    },
};

/// The verdict on one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementVerdict {
    Allow,
    Deny,
    /// Held until an allowed approver decides.
    Approve,
}

impl StatementVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementVerdict::Allow => "allow",
            StatementVerdict::Deny => "deny",
            StatementVerdict::Approve => "approve",
        }
    }
}

impl fmt::Display for StatementVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on a statement (or a whole query string) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementDecision {
    pub verdict: StatementVerdict,
    /// The deciding rule; `"default-deny"` when no rule allows the statement.
    pub rule: Arc<str>,
    /// What decided, e.g. `flag drop is denied` or `write access to
    /// billing.invoices is denied (tables "billing.*")`.
    pub reason: String,
    /// Which statement of the query string decided (0 for a single one).
    pub statement_index: usize,
}

impl fmt::Display for StatementDecision {
    /// `deny by rule ci-reads-orders: flag drop is denied`, the text a
    /// client's error message can carry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by rule {}: {}", self.verdict, self.rule, self.reason)
    }
}

/// The allow rules that let one flow use one postgres target, in load
/// order, with their `[rule.postgres]` sections. Cheap to clone and to keep
/// for a session's lifetime.
#[derive(Debug, Clone)]
pub struct SessionRules {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    target: Arc<str>,
    /// `None` when the target is not a postgres target: no role can log in.
    postgres: Option<Arc<PostgresTarget>>,
    rules: Vec<SessionRule>,
}

#[derive(Debug)]
pub(super) struct SessionRule {
    pub name: Arc<str>,
    /// `None`: the rule has no `[rule.postgres]` and allows everything.
    pub postgres: Option<Arc<PostgresRule>>,
    pub approval: Option<Arc<ApprovalRule>>,
}

static UNRESTRICTED: PostgresRule = PostgresRule::UNRESTRICTED;

impl SessionRule {
    pub(super) fn statements(&self) -> &PostgresRule {
        self.postgres.as_deref().unwrap_or(&UNRESTRICTED)
    }

    fn permits_role(&self, role: &str) -> bool {
        self.statements()
            .roles
            .as_ref()
            .is_none_or(|roles| roles.iter().any(|r| r == role))
    }
}

impl SessionRules {
    pub(super) fn new(
        target: Arc<str>,
        postgres: Option<Arc<PostgresTarget>>,
        rules: Vec<SessionRule>,
    ) -> SessionRules {
        SessionRules {
            inner: Arc::new(Inner {
                target,
                postgres,
                rules,
            }),
        }
    }

    /// True when no rule lets the flow use the target: every role and
    /// statement is denied.
    pub fn is_empty(&self) -> bool {
        self.inner.rules.is_empty()
    }

    /// The approval settings of the rule named `rule`, when it holds
    /// statements for approval.
    pub fn approval(&self, rule: &str) -> Option<&Arc<ApprovalRule>> {
        self.inner
            .rules
            .iter()
            .find(|r| &*r.name == rule)
            .and_then(|r| r.approval.as_ref())
    }

    /// The target these rules are for.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The names of the rules, in load order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.inner.rules.iter().map(|r| &*r.name)
    }

    /// Which rule lets this flow log in as `role` (the first in load order);
    /// `Err` says which roles it may use, e.g. `role "postgres" is not
    /// allowed for this job on target orders-db; allowed roles: app_ro`.
    /// A role needs credentials in the target as well as a rule.
    pub fn authorize_role(&self, role: &str) -> Result<Arc<str>, String> {
        if self.has_credentials(role)
            && let Some(rule) = self.inner.rules.iter().find(|r| r.permits_role(role))
        {
            return Ok(rule.name.clone());
        }
        let allowed = self.allowed_roles();
        Err(format!(
            "role {role:?} is not allowed for this job on target {}; allowed roles: {}",
            self.inner.target,
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ))
    }

    /// These rules narrowed to those that let the flow log in as `role`,
    /// so that a rule written for another role cannot allow this session's
    /// statements; `Err` as [`SessionRules::authorize_role`].
    pub fn for_role(&self, role: &str) -> Result<SessionRules, String> {
        self.authorize_role(role)?;
        let rules = self
            .inner
            .rules
            .iter()
            .filter(|r| r.permits_role(role))
            .map(|r| SessionRule {
                name: r.name.clone(),
                postgres: r.postgres.clone(),
                approval: r.approval.clone(),
            })
            .collect();
        Ok(SessionRules::new(
            self.inner.target.clone(),
            self.inner.postgres.clone(),
            rules,
        ))
    }

    fn has_credentials(&self, role: &str) -> bool {
        self.inner
            .postgres
            .as_ref()
            .is_some_and(|t| t.credentials.contains_key(role))
    }

    /// Roles with credentials that at least one rule permits, sorted.
    pub fn allowed_roles(&self) -> Vec<&str> {
        let Some(target) = &self.inner.postgres else {
            return Vec::new();
        };
        target
            .credentials
            .keys()
            .map(String::as_str)
            .filter(|role| self.inner.rules.iter().any(|r| r.permits_role(role)))
            .collect()
    }

    /// Decides one statement, deny-overrides across rules: Deny if any rule
    /// denies it (its class or a flag in `deny`, or a table rule denying the
    /// access); else Approve if any rule needs approval for it; else Allow
    /// if a rule's `allow` has its class; else Deny by `default-deny`.
    /// Table rules take an unqualified name to be in each schema of
    /// `search_path` (the session's, as the server resolves it).
    pub fn decide(&self, statement: &Statement, search_path: &SearchPath) -> StatementDecision {
        self.outcome(statement, search_path).decision(self, 0)
    }

    /// A whole query string: a denied statement denies it (the first one is
    /// named), else the first statement that needs approval holds it, else
    /// it is allowed. Denial wins over an earlier approval because an
    /// approved string is sent whole.
    pub fn decide_all(
        &self,
        classification: &Classification,
        search_path: &SearchPath,
    ) -> StatementDecision {
        let mut first_approve: Option<(usize, Outcome)> = None;
        let mut first_allow = None;
        for (index, statement) in classification.statements.iter().enumerate() {
            let outcome = self.outcome(statement, search_path);
            match outcome.verdict() {
                StatementVerdict::Deny => return outcome.decision(self, index),
                StatementVerdict::Approve => match &first_approve {
                    None => first_approve = Some((index, outcome)),
                    // An approved string is sent whole: one rule's
                    // approvers must not release another rule's statement.
                    Some((_, Outcome::Held(first, _)))
                        if let Outcome::Held(other, _) = &outcome
                            && other.name != first.name =>
                    {
                        return Outcome::HeldTwice(first, other).decision(self, index);
                    }
                    Some(_) => {}
                },
                StatementVerdict::Allow if first_allow.is_none() => {
                    first_allow = Some((index, outcome));
                }
                _ => {}
            }
        }
        match first_approve.or(first_allow) {
            Some((index, outcome)) => outcome.decision(self, index),
            // An empty query string runs nothing.
            None => match self.inner.rules.first() {
                Some(rule) => StatementDecision {
                    verdict: StatementVerdict::Allow,
                    rule: rule.name.clone(),
                    reason: "the query has no statements".to_owned(),
                    statement_index: 0,
                },
                None => Outcome::NoRules.decision(self, 0),
            },
        }
    }

    /// How many statements of a query string need approval.
    pub fn holds(&self, classification: &Classification, search_path: &SearchPath) -> usize {
        classification
            .statements
            .iter()
            .filter(|s| self.outcome(s, search_path).verdict() == StatementVerdict::Approve)
            .count()
    }

    /// The verdict without its text: nothing is allocated until the
    /// deciding outcome is known.
    fn outcome<'s>(&'s self, statement: &'s Statement, path: &'s SearchPath) -> Outcome<'s> {
        let rules = &self.inner.rules;
        if rules.is_empty() {
            return Outcome::NoRules;
        }
        let class = class_bit(&statement.class);
        for rule in rules {
            if let Some(hit) = rule.statements().hit(statement, path, class, Check::Deny) {
                return Outcome::Denied(rule, hit);
            }
        }
        let mut holding = rules.iter().filter_map(|rule| {
            rule.statements()
                .hit(statement, path, class, Check::Approve)
                .map(|hit| (rule, hit))
        });
        if let Some((rule, hit)) = holding.next() {
            // Each rule's approvers answer for that rule alone.
            return match holding.find(|(other, _)| other.name != rule.name) {
                Some((other, _)) => Outcome::HeldTwice(rule, other),
                None => Outcome::Held(rule, hit),
            };
        }
        match rules.iter().find(|r| r.statements().allow.contains(class)) {
            Some(rule) => Outcome::Allowed(rule, class),
            None => Outcome::NotAllowed(class),
        }
    }
}

#[derive(Clone, Copy)]
enum Check {
    Deny,
    Approve,
}

/// Why a rule denies or holds a statement.
enum Hit<'s> {
    Class(usize),
    Flag(usize),
    Table {
        access: usize,
        table: &'s TableRef,
        pattern: &'s TablePattern,
        found: Found<'s>,
    },
    Function {
        function: &'s FunctionRef,
        pattern: &'s FunctionPattern,
        found: Found<'s>,
    },
}

/// Where a table pattern found a table.
#[derive(Clone, Copy)]
enum Found<'s> {
    /// In the schema the statement names.
    AsWritten,
    /// An unqualified name, in this schema of the search path (or
    /// `pg_catalog`).
    InSchema(&'s str),
    /// An unqualified name while the search path is unknown.
    AnySchema,
}

enum Outcome<'s> {
    NoRules,
    Denied(&'s SessionRule, Hit<'s>),
    Held(&'s SessionRule, Hit<'s>),
    /// Held by two rules (the first two in policy order): refused, since
    /// neither rule's approvers may release what the other holds.
    HeldTwice(&'s SessionRule, &'s SessionRule),
    Allowed(&'s SessionRule, usize),
    NotAllowed(usize),
}

impl Outcome<'_> {
    fn verdict(&self) -> StatementVerdict {
        match self {
            Outcome::Allowed(..) => StatementVerdict::Allow,
            Outcome::Held(..) => StatementVerdict::Approve,
            Outcome::NoRules
            | Outcome::Denied(..)
            | Outcome::HeldTwice(..)
            | Outcome::NotAllowed(_) => StatementVerdict::Deny,
        }
    }

    fn decision(self, rules: &SessionRules, statement_index: usize) -> StatementDecision {
        let verdict = self.verdict();
        let (rule, reason) = match self {
            Outcome::NoRules => (
                Arc::from(DEFAULT_DENY),
                format!("no rule lets this job use target {}", rules.inner.target),
            ),
            Outcome::Denied(rule, hit) => (rule.name.clone(), hit.describe("is denied")),
            Outcome::Held(rule, hit) => (rule.name.clone(), hit.describe("needs approval")),
            Outcome::HeldTwice(first, second) => (
                first.name.clone(),
                format!(
                    "needs approval under rules {} and {}, and one approval cannot answer for both; send held statements one at a time, or ask the policy owners to hold them under one rule",
                    first.name, second.name
                ),
            ),
            Outcome::Allowed(rule, class) => (
                rule.name.clone(),
                format!("statement class {} is allowed", CLASS_NAMES[class]),
            ),
            Outcome::NotAllowed(class) => {
                let names: Vec<&str> = rules.rule_names().collect();
                (
                    Arc::from(DEFAULT_DENY),
                    format!(
                        "statement class {} is not allowed by rule{} {}",
                        CLASS_NAMES[class],
                        if names.len() == 1 { "" } else { "s" },
                        names.join(", ")
                    ),
                )
            }
        };
        StatementDecision {
            verdict,
            rule,
            reason,
            statement_index,
        }
    }
}

impl Hit<'_> {
    fn describe(&self, what: &str) -> String {
        match self {
            Hit::Class(class) => format!("statement class {} {what}", CLASS_NAMES[*class]),
            Hit::Flag(flag) => format!("flag {} {what}", FLAG_NAMES[*flag]),
            Hit::Table {
                access,
                table,
                pattern,
                found,
            } => {
                let name = match (found, &table.schema) {
                    (_, Some(schema)) if table.is_every_relation() => {
                        if schema == TableRef::EVERY {
                            "every table (the statement reaches tables it does not name: CASCADE, or what a role owns)".to_owned()
                        } else {
                            format!("every table of schema {schema}")
                        }
                    }
                    (Found::AsWritten, Some(schema)) => format!("{schema}.{}", table.name),
                    (Found::AsWritten, None) => table.name.clone(),
                    (Found::InSchema(schema), _) => {
                        format!("{0} ({schema}.{0} on the search_path)", table.name)
                    }
                    (Found::AnySchema, _) => format!(
                        "{} (any schema: the session's search_path is unknown)",
                        table.name
                    ),
                };
                format!(
                    "{} access to {name} {what} (tables {:?})",
                    ACCESS_NAMES[*access], pattern.text
                )
            }
            Hit::Function {
                function,
                pattern,
                found,
            } => {
                let name = match found {
                    Found::AsWritten => function.to_string(),
                    Found::InSchema(schema) => {
                        format!("{0} ({schema}.{0} on the search_path)", function.name)
                    }
                    Found::AnySchema => format!(
                        "{} (any schema: the session's search_path is unknown)",
                        function.name
                    ),
                };
                format!(
                    "calling function {name} {what} (functions {:?})",
                    pattern.text
                )
            }
        }
    }
}

impl PostgresRule {
    /// The first reason, if any, this rule denies (or holds) `statement`:
    /// its class, then its flags, then its tables, in that order.
    fn hit<'s>(
        &'s self,
        statement: &'s Statement,
        path: &'s SearchPath,
        class: usize,
        check: Check,
    ) -> Option<Hit<'s>> {
        let kinds = match check {
            Check::Deny => self.deny,
            Check::Approve => self.approve,
        };
        if kinds.classes.contains(class) {
            return Some(Hit::Class(class));
        }
        if !kinds.flags.is_empty()
            && let Some(flag) = statement
                .flags
                .iter()
                .map(flag_bit)
                .find(|bit| kinds.flags.contains(*bit))
        {
            return Some(Hit::Flag(flag));
        }
        for table in &statement.tables {
            let access = access_bit(&table.access);
            for rule in &self.tables {
                let accesses: Set = match check {
                    Check::Deny => rule.deny,
                    Check::Approve => rule.approve,
                };
                if !accesses.contains(access) {
                    continue;
                }
                if let Some((pattern, found)) = rule
                    .patterns
                    .iter()
                    .find_map(|p| p.find(table, path).map(|found| (p, found)))
                {
                    return Some(Hit::Table {
                        access,
                        table,
                        pattern,
                        found,
                    });
                }
            }
        }
        let functions = match check {
            Check::Deny => &self.deny_functions,
            Check::Approve => &self.approve_functions,
        };
        if functions.is_empty() {
            return None;
        }
        statement.functions.iter().find_map(|function| {
            functions.iter().find_map(|pattern| {
                pattern.find(function, path).map(|found| Hit::Function {
                    function,
                    pattern,
                    found,
                })
            })
        })
    }
}

impl FunctionPattern {
    /// Whether the pattern covers `function`, and where. An unqualified
    /// call resolves through `pg_catalog` first, then the search path
    /// (whichever schema holds the name now or after a CREATE), so a
    /// pattern matching any of those covers it; any schema when the path
    /// is unknown. Case-insensitive, as table patterns are.
    ///
    /// A name in attribute notation (`i.purge`) is most often a column:
    /// only a pattern naming the function exactly (no glob in its name
    /// part) takes it for a call, so `"ops.*"` does not deny every
    /// qualified column.
    fn find<'s>(&self, function: &FunctionRef, path: &'s SearchPath) -> Option<Found<'s>> {
        if function.attribute && self.function.as_str().contains(['*', '?', '[']) {
            return None;
        }
        if !self.function.matches_with(&function.name, TABLE_MATCH) {
            return None;
        }
        if let Some(schema) = function.schema.as_deref() {
            return self
                .schema
                .matches_with(schema, TABLE_MATCH)
                .then_some(Found::AsWritten);
        }
        // A bare pattern names the function in any schema.
        if self.schema.as_str() == "*" {
            return Some(Found::AsWritten);
        }
        let Some(schemas) = path.schemas() else {
            return Some(Found::AnySchema);
        };
        if self.schema.matches_with("pg_catalog", TABLE_MATCH) {
            return Some(Found::InSchema("pg_catalog"));
        }
        schemas
            .iter()
            .find(|s| self.schema.matches_with(s, TABLE_MATCH))
            .map(|s| Found::InSchema(s))
    }
}

impl TablePattern {
    /// Whether the pattern covers `table`, and where it found it. An
    /// unqualified name may be in any schema of the session's search path
    /// (whichever holds it, now or after a CREATE), so matching one of them
    /// is enough; any schema at all when the path is unknown. A `pg_*`
    /// name may also be in `pg_catalog`, which PostgreSQL searches before
    /// the path and where every relation is named `pg_*`.
    /// Case-insensitive, as masking globs are: a quoted mixed-case twin of a
    /// denied table is denied too, the safe direction.
    ///
    /// A reference to every relation ([`TableRef::EVERY`]: a schema
    /// renamed, dropped or granted, a `CASCADE`) matches every pattern of
    /// its schema, and every pattern at all when its schema is `EVERY` too.
    fn find<'s>(&self, table: &TableRef, path: &'s SearchPath) -> Option<Found<'s>> {
        if !table.is_every_relation() && !self.table.matches_with(&table.name, TABLE_MATCH) {
            return None;
        }
        if let Some(schema) = table.schema.as_deref() {
            return (schema == TableRef::EVERY || self.schema.matches_with(schema, TABLE_MATCH))
                .then_some(Found::AsWritten);
        }
        let Some(schemas) = path.schemas() else {
            return Some(Found::AnySchema);
        };
        if table.name.starts_with("pg_") && self.schema.matches_with("pg_catalog", TABLE_MATCH) {
            return Some(Found::InSchema("pg_catalog"));
        }
        schemas
            .iter()
            .find(|s| self.schema.matches_with(s, TABLE_MATCH))
            .map(|s| Found::InSchema(s))
    }
}

/// `*` crosses every character: identifiers have no path separators.
const TABLE_MATCH: MatchOptions = MatchOptions {
    case_sensitive: false,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};
