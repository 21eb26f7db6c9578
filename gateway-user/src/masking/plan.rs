//! The masking policy, the per-result-set plan it makes from a RowDescription, and row rewriting.
use std::{borrow::Cow, fmt, fmt::Write as _, ops::Range, sync::Arc};

use super::{
    error::MaskingError,
    rules::{ColumnRule, DetectorRule, MATCH, NameRule},
    strategy::{Hasher, MIN_HASH_KEY_LEN, Strategy, json_string_into, mask_into},
};

/// PostgreSQL type OIDs the planner distinguishes (`pg_type.oid`, stable across versions).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const JSON_ARRAY: u32 = 199;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const CHAR_ARRAY: u32 = 1002;
    pub const NAME_ARRAY: u32 = 1003;
    pub const TEXT_ARRAY: u32 = 1009;
    /// Binary forms that can carry text the detectors cannot read in place.
    pub const BYTEA: u32 = 17;
    pub const BYTEA_ARRAY: u32 = 1001;
    pub const RECORD: u32 = 2249;
    pub const RECORD_ARRAY: u32 = 2287;
    /// First OID of user-defined types (composites, enums, domains, arrays of them).
    pub const FIRST_USER_OID: u32 = 16384;
    pub const BPCHAR_ARRAY: u32 = 1014;
    pub const VARCHAR_ARRAY: u32 = 1015;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
    pub const JSONB_ARRAY: u32 = 3807;
    /// `FirstNormalObjectId`: OIDs from here on are user-defined (extensions,
    /// enums, composites), whose text form we cannot know.
    pub const FIRST_USER: u32 = 16384;
}

/// Result-set masking configuration: what to mask and how.
///
/// Immutable and cheap to share; a policy reload builds a new one, and plans
/// already made keep working with what they copied.
#[derive(Clone, Default)]
pub struct MaskingPolicy {
    /// Tried first, in order, against the column's source table column.
    pub columns: Vec<ColumnRule>,
    /// Tried next, in order, against the column's output name and its
    /// source column's name.
    pub names: Vec<NameRule>,
    /// Run over the values of every scanned column.
    pub detectors: Vec<DetectorRule>,
    /// HMAC-SHA256 key of the `hash` strategy. Never logged.
    pub hash_key: Arc<[u8]>,
}

/// What the session knows about one result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnInfo<'a> {
    /// `(schema, table, column)` when the column comes straight from a table
    /// column (RowDescription table OID and attribute number, resolved
    /// through the catalog); `None` for computed columns.
    pub source: Option<(&'a str, &'a str, &'a str)>,
    /// `(schema, table)` of every table the source table is a partition or
    /// inheritance child of, nearest first. A column rule on one of them
    /// covers the same-named column here: reading a partition directly
    /// must not get around its parent's rule.
    pub ancestors: &'a [(String, String)],
    /// The field name in RowDescription (the alias, if any).
    pub output_name: &'a str,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// What the plan does to one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnAction {
    /// Forward values untouched.
    Keep,
    /// Rewrite every non-NULL value with `strategy` (or NULL it, for types
    /// that cannot hold the masked text: see the module table).
    Mask { strategy: Strategy, rule: Arc<str> },
    /// Run the detectors on every non-NULL value and mask what they find.
    Scan,
    /// NULL every value: the column comes from a table whose columns could
    /// not be looked up, so a column rule may name it ([`ResultPlan::withhold`]).
    Withhold,
}

/// What a statement that reads a table with column rules means for its
/// result ([`MaskingPolicy::plan_reading`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reading {
    /// The column rule (its index in the policy's `columns`, from
    /// [`MaskingPolicy::reading_rule`]) under which columns are redacted.
    pub rule: usize,
    /// The statement also changes data. A RETURNING column that comes
    /// straight from its table may then hold what the same statement just
    /// copied there from a ruled column (found in review: `UPDATE
    /// customers SET name = email … RETURNING name`, rolled back after), so
    /// every column no rule of its own masks is redacted too.
    pub changes_data: bool,
}

/// The rule [`ResultPlan::masked_columns`] names for a withheld column.
pub const WITHHELD_RULE: &str = "unresolved-column";

impl MaskingPolicy {
    /// Masks what the detectors find in free text that is not a result
    /// value (an error message, a notification payload), as in a computed
    /// text column; `None` when they find nothing.
    pub fn scrub_text(&self, text: &str) -> Option<String> {
        if self.detectors.is_empty() {
            return None;
        }
        let repr = Repr::Text { padded: false };
        let plan = ResultPlan {
            columns: vec![PlannedColumn {
                action: ColumnAction::Scan,
                repr,
                unsourced: false,
            }],
            detectors: Arc::from(self.detectors.as_slice()),
            hasher: Hasher::new(&self.hash_key),
            noop: false,
        };
        let mut row = MaskedRow::default();
        match plan.scan(repr, text.as_bytes(), &mut row) {
            Edit::Value(range) => Some(String::from_utf8_lossy(&row.arena[range]).into_owned()),
            Edit::Keep | Edit::Null => None,
        }
    }

    /// Whether any rule names columns by their source table.
    pub fn has_column_rules(&self) -> bool {
        !self.columns.is_empty()
    }

    /// Whether any rule masks whole columns (by source or by name).
    pub fn masks_columns(&self) -> bool {
        !self.columns.is_empty() || !self.names.is_empty()
    }

    /// Whether the policy masks nothing: no rules and no detectors.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.names.is_empty() && self.detectors.is_empty()
    }

    /// Checks what cannot be checked rule by rule: a `hash` strategy needs a
    /// key of at least [`MIN_HASH_KEY_LEN`] bytes.
    pub fn validate(&self) -> Result<(), MaskingError> {
        let hashes = self
            .columns
            .iter()
            .map(|r| r.strategy)
            .chain(self.names.iter().map(|r| r.strategy))
            .chain(self.detectors.iter().map(|r| r.strategy))
            .any(|s| s == Strategy::Hash);
        if hashes && self.hash_key.len() < MIN_HASH_KEY_LEN {
            return Err(MaskingError::WeakHashKey {
                len: self.hash_key.len(),
                min: MIN_HASH_KEY_LEN,
            });
        }
        Ok(())
    }

    /// Decides, once per RowDescription, what happens to each column:
    ///
    /// 1. the first column rule matching the column's source, or the
    ///    same-named column of one of its table's ancestors → `Mask`;
    /// 2. else the first name rule matching its output name or its source
    ///    column's name → `Mask`;
    /// 3. else, if there are detectors, `Scan` when the column is computed
    ///    (and its values are scannable) or its type is text-like;
    /// 4. else `Keep`.
    ///
    /// For a statement that reads a table with column rules, see
    /// [`MaskingPolicy::plan_reading`].
    pub fn plan(&self, columns: &[ColumnInfo<'_>]) -> ResultPlan {
        self.plan_reading(columns, None)
    }

    /// [`MaskingPolicy::plan`] for a result of a statement that reads a
    /// table with column rules: `reading` is the index (in `columns` of
    /// the policy) of one of them, from [`MaskingPolicy::reading_rule`].
    /// A column with no source is then redacted under that rule's name,
    /// before any name rule and instead of a scan: a UNION arm, a scalar
    /// subquery or a recursive CTE hands a ruled column through with no
    /// source, and which arm a value came from cannot be known.
    ///
    /// Redacted whatever the rule's strategy: over values the job computes,
    /// `partial` shows any characters it moves to the end (`'....' ||
    /// substr(email, 1, 4)`), and `hash` hashes a literal of the same
    /// result with the same key, a dictionary for every guess.
    pub fn plan_reading(&self, columns: &[ColumnInfo<'_>], reading: Option<Reading>) -> ResultPlan {
        let changes_data = reading.is_some_and(|r| r.changes_data);
        let reading = reading.and_then(|r| self.columns.get(r.rule));
        let planned: Vec<PlannedColumn> = columns
            .iter()
            .map(|info| {
                let repr = Repr::of(info.type_oid, info.format);
                let unsourced = reading.is_some() && info.source.is_none();
                let redact = |rule: &ColumnRule| ColumnAction::Mask {
                    strategy: Strategy::Redact,
                    rule: rule.name.clone(),
                };
                let action = match reading {
                    Some(rule) if unsourced => redact(rule),
                    Some(rule) if changes_data => match self.action(info, repr) {
                        masked @ ColumnAction::Mask { .. } => masked,
                        _ => redact(rule),
                    },
                    _ => self.action(info, repr),
                };
                PlannedColumn {
                    action,
                    repr,
                    unsourced,
                }
            })
            .collect();
        let noop = planned.iter().all(|c| c.action == ColumnAction::Keep);
        ResultPlan {
            columns: planned,
            detectors: if noop {
                Arc::from([])
            } else {
                Arc::from(self.detectors.as_slice())
            },
            hasher: Hasher::new(if noop { &[] } else { &self.hash_key }),
            noop,
        }
    }

    /// The first column rule covering table column `schema.table.column`,
    /// or the same-named column of one of the table's `ancestors`.
    pub fn column_rule(
        &self,
        (schema, table, column): (&str, &str, &str),
        ancestors: &[(String, String)],
    ) -> Option<&ColumnRule> {
        self.columns.iter().find(|r| {
            r.matches(schema, table, column)
                || ancestors
                    .iter()
                    .any(|(schema, table)| r.matches(schema, table, column))
        })
    }

    /// The first column rule covering some table of `tables`, by its index
    /// in `columns`; `None` when no rule covers any of them. Each table is
    /// `(schema, name)`, `None` standing for any: a name the statement does
    /// not qualify may resolve to any schema on the search path, and
    /// matching every schema masks more, never less.
    pub fn reading_rule<'t>(
        &self,
        tables: impl IntoIterator<Item = (Option<&'t str>, Option<&'t str>)>,
    ) -> Option<usize> {
        let tables: Vec<_> = tables.into_iter().collect();
        self.columns.iter().position(|rule| {
            tables.iter().any(|(schema, table)| {
                schema.is_none_or(|s| rule.schema.matches_with(s, MATCH))
                    && table.is_none_or(|t| rule.table.matches_with(t, MATCH))
            })
        })
    }

    fn action(&self, info: &ColumnInfo<'_>, repr: Repr) -> ColumnAction {
        let by_source = info.source.and_then(|source| {
            self.column_rule(source, info.ancestors)
                .map(|r| (r.strategy, &r.name))
        });
        // The source column's name too: an alias (`SELECT ssn AS x`) must
        // not get around a name rule.
        let source_name = info.source.map(|(_, _, column)| column);
        let by_name = || {
            self.names
                .iter()
                .find(|r| r.matches(info.output_name) || source_name.is_some_and(|c| r.matches(c)))
                .map(|r| (r.strategy, &r.name))
        };
        if let Some((strategy, rule)) = by_source.or_else(by_name) {
            return ColumnAction::Mask {
                strategy,
                rule: rule.clone(),
            };
        }
        let scan = match info.source {
            None => repr.scannable(),
            Some(_) => repr.text_like(info.type_oid),
        };
        if scan && !self.detectors.is_empty() {
            ColumnAction::Scan
        } else {
            ColumnAction::Keep
        }
    }
}

impl fmt::Debug for MaskingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskingPolicy")
            .field("columns", &self.columns)
            .field("names", &self.names)
            .field("detectors", &self.detectors)
            .field("hash_key", &format_args!("<{} bytes>", self.hash_key.len()))
            .finish()
    }
}

/// How a column's values are encoded, which decides what masking can write
/// into them and stay type-valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repr {
    /// UTF-8 text: text-format text, varchar, bpchar, name, "char", unknown;
    /// binary text, varchar, bpchar, name (their binary form is the text).
    /// `padded`: bpchar, whose trailing blanks are padding, not data.
    Text { padded: bool },
    /// Text-format json and jsonb: whole-value masks become a JSON string.
    Json,
    /// Text-format arrays of text-like types: detector hits can be replaced
    /// inside the literal; whole-value masks become NULL.
    TextArray,
    /// Binary json (the text itself) and jsonb (version byte 1, then the
    /// text): scannable after the prefix; whole-value masks become NULL.
    BinaryJson { versioned: bool },
    /// Text form of any other type (numbers, user-defined types…): any
    /// detector hit or mask makes the value NULL.
    OtherText,
    /// Text-format bytea and bytea[] (`\x6a6f…`, or the escape format):
    /// detectors read the bytes the hex spells, since `convert_to(email,
    /// 'UTF8')` is the same value one `decode` away; a hit or a mask makes
    /// the value NULL.
    TextBytea,
    /// Binary int8 and numeric: decoded to their text form for the
    /// detectors (a card number stored as a number), like `OtherText`.
    BinaryNumber { numeric: bool },
    /// Values detectors cannot see (binary non-text, or text forms that
    /// cannot hold any detector match such as int4 or timestamp): never
    /// scanned; masks become NULL.
    Opaque,
    /// Binary arrays, records, bytea and user-defined types: they can hold
    /// text (a card number inside a binary text[]), but not in a form the
    /// detectors can read in place. Where a scan is due the value becomes
    /// NULL: fail closed rather than pass unread text.
    Unreadable,
    /// Binary of any other built-in type: several send text or digits as
    /// they are (`xml`, `refcursor`, `int8[]`, `numeric[]`, `tsvector`),
    /// so a computed one is not read as safe: NULL where a scan is due.
    /// A table column of one is treated like its text form (not scanned).
    UnreadableBuiltin,
}

impl Repr {
    fn of(type_oid: u32, format: i16) -> Repr {
        use oid::*;
        match (format, type_oid) {
            (0, TEXT | VARCHAR | NAME | CHAR | UNKNOWN) => Repr::Text { padded: false },
            (0, BPCHAR) => Repr::Text { padded: true },
            (0, JSON | JSONB) => Repr::Json,
            (0, BYTEA | BYTEA_ARRAY) => Repr::TextBytea,
            (0, TEXT_ARRAY | VARCHAR_ARRAY | BPCHAR_ARRAY | NAME_ARRAY | CHAR_ARRAY) => {
                Repr::TextArray
            }
            // Too few digits for a card and no `ddd-dd-dddd` shape: scanning is pure cost.
            (
                0,
                BOOL | INT2 | INT4 | OID | FLOAT4 | DATE | TIME | TIMETZ | TIMESTAMP | TIMESTAMPTZ
                | INTERVAL | UUID,
            ) => Repr::Opaque,
            (0, _) => Repr::OtherText,
            (1, TEXT | VARCHAR | NAME) => Repr::Text { padded: false },
            (1, BPCHAR) => Repr::Text { padded: true },
            (1, JSON) => Repr::BinaryJson { versioned: false },
            (1, JSONB) => Repr::BinaryJson { versioned: true },
            (
                1,
                BYTEA | JSON_ARRAY | BYTEA_ARRAY | RECORD | RECORD_ARRAY | JSONB_ARRAY | TEXT_ARRAY
                | VARCHAR_ARRAY | BPCHAR_ARRAY | NAME_ARRAY | CHAR_ARRAY,
            ) => Repr::Unreadable,
            (1, oid) if oid >= FIRST_USER_OID => Repr::Unreadable,
            (1, INT8) => Repr::BinaryNumber { numeric: false },
            (1, NUMERIC) => Repr::BinaryNumber { numeric: true },
            // Fixed-size values with no room for a match (float8 as in its
            // text form, whose exponent notation no detector reads).
            (
                1,
                BOOL | INT2 | INT4 | OID | FLOAT4 | FLOAT8 | DATE | TIME | TIMETZ | TIMESTAMP
                | TIMESTAMPTZ | INTERVAL | UUID,
            ) => Repr::Opaque,
            (1, _) => Repr::UnreadableBuiltin,
            // Unknown format codes (the server refuses them).
            _ => Repr::Opaque,
        }
    }

    /// Whether a computed column of this representation is scanned.
    fn scannable(self) -> bool {
        self != Repr::Opaque
    }

    /// Whether a table column of this representation is scanned: text-like
    /// types; json arrays (JSON escaped inside an array literal: a hit NULLs
    /// the value rather than risk breaking either syntax); and user-defined
    /// types (citext, enums, composites…) whose text may hold anything.
    fn text_like(self, type_oid: u32) -> bool {
        match self {
            Repr::Text { .. }
            | Repr::Json
            | Repr::TextArray
            | Repr::BinaryJson { .. }
            | Repr::TextBytea
            | Repr::Unreadable => true,
            Repr::OtherText => {
                type_oid >= oid::FIRST_USER
                    || matches!(type_oid, oid::JSON_ARRAY | oid::JSONB_ARRAY)
            }
            // Like their text form (OtherText of a built-in type).
            Repr::BinaryNumber { .. } | Repr::Opaque | Repr::UnreadableBuiltin => false,
        }
    }
}

#[derive(Debug, Clone)]
struct PlannedColumn {
    action: ColumnAction,
    repr: Repr,
    /// Masked for having no source in a read of a ruled table
    /// ([`MaskingPolicy::plan_reading`]): a column whose source could not
    /// be looked up looks the same, and is withheld all the same.
    unsourced: bool,
}

/// The masking decided for one result set; made by [`MaskingPolicy::plan`]
/// at RowDescription and applied to each DataRow.
#[derive(Debug, Clone)]
pub struct ResultPlan {
    columns: Vec<PlannedColumn>,
    detectors: Arc<[DetectorRule]>,
    hasher: Hasher,
    noop: bool,
}

impl ResultPlan {
    /// Whether every column is kept: the session forwards DataRows untouched
    /// without looking at them.
    pub fn is_noop(&self) -> bool {
        self.noop
    }

    /// Withholds (NULLs) the columns at `indices` that no rule masks
    /// already: their source table could not be looked up, and failing
    /// closed beats forwarding a column a rule may name.
    pub fn withhold(&mut self, indices: impl IntoIterator<Item = usize>) {
        for i in indices {
            if let Some(column) = self.columns.get_mut(i)
                && (column.unsourced || !matches!(column.action, ColumnAction::Mask { .. }))
            {
                column.action = ColumnAction::Withhold;
                self.noop = false;
            }
        }
    }

    /// Masks column `index` whole under `rule`, as if the rule matched it:
    /// for a whole-row reference (`SELECT c FROM customers c`), a record
    /// holding a column `rule` masks. Its values become NULL whatever the
    /// type: the rule's strategy applied to the whole text would keep the
    /// other fields, and could keep part of the masked one.
    pub fn mask_column(&mut self, index: usize, rule: &ColumnRule) {
        if let Some(column) = self.columns.get_mut(index) {
            column.action = ColumnAction::Mask {
                strategy: rule.strategy,
                rule: rule.name.clone(),
            };
            column.repr = Repr::Unreadable;
            self.noop = false;
        }
    }

    /// Masks column `index` with `strategy` under `rule`, as a column rule
    /// matching its source would (its type and format decide how): for a
    /// view's column, which PostgreSQL reports as the view's.
    pub fn mask_column_with(&mut self, index: usize, strategy: Strategy, rule: &ColumnRule) {
        if let Some(column) = self.columns.get_mut(index) {
            column.action = ColumnAction::Mask {
                strategy,
                rule: rule.name.clone(),
            };
            self.noop = false;
        }
    }

    /// Number of columns planned.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the result set has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The action for each column, in column order.
    pub fn actions(&self) -> impl Iterator<Item = &ColumnAction> {
        self.columns.iter().map(|c| &c.action)
    }

    /// Masked columns and the rule masking each, for logs and recordings.
    pub fn masked_columns(&self) -> impl Iterator<Item = (usize, &str)> {
        self.columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match &c.action {
                ColumnAction::Mask { rule, .. } => Some((i, &**rule)),
                ColumnAction::Withhold => Some((i, WITHHELD_RULE)),
                _ => None,
            })
    }

    /// Indices of the columns whose values the detectors scan.
    pub fn scanned_columns(&self) -> impl Iterator<Item = usize> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.action == ColumnAction::Scan)
            .map(|(i, _)| i)
    }

    /// Masks one DataRow. `None` means nothing changed and the caller forwards
    /// the original bytes without copying; `Some` holds every column's new
    /// value (`None` = NULL), borrowing the unchanged ones.
    ///
    /// A row whose column count differs from the RowDescription is a protocol
    /// violation the session should reject first; if one arrives anyway,
    /// every value comes back NULL rather than guessing which rule applies.
    /// [`ResultPlan::mask`] does the same without allocating per row.
    pub fn apply<'a>(&self, values: &[Option<&'a [u8]>]) -> Option<Vec<Option<Cow<'a, [u8]>>>> {
        let mut row = MaskedRow::default();
        if !self.mask(values.iter().copied(), &mut row) {
            return None;
        }
        Some(
            values
                .iter()
                .zip(&row.edits)
                .map(|(value, edit)| match edit {
                    Edit::Keep => value.map(Cow::Borrowed),
                    Edit::Null => None,
                    Edit::Value(range) => Some(Cow::Owned(row.arena[range.clone()].to_vec())),
                })
                .collect(),
        )
    }

    /// Masks one row's `values` into `row`, reusing its buffers; whether any
    /// value changed. When it returns `true`, [`MaskedRow::values`] gives the
    /// row as the client must see it.
    pub fn mask<'v>(
        &self,
        values: impl ExactSizeIterator<Item = Option<&'v [u8]>>,
        row: &mut MaskedRow,
    ) -> bool {
        row.clear();
        if self.noop {
            return false;
        }
        if values.len() != self.columns.len() {
            row.edits.resize(values.len(), Edit::Null);
            return true;
        }
        let mut changed = false;
        for (column, value) in self.columns.iter().zip(values) {
            // NULL stays NULL: there is nothing to leak.
            let edit = match value {
                Some(v) => self.rewrite(column, v, row),
                None => Edit::Keep,
            };
            changed |= !matches!(edit, Edit::Keep);
            row.edits.push(edit);
        }
        changed
    }

    fn rewrite(&self, column: &PlannedColumn, value: &[u8], row: &mut MaskedRow) -> Edit {
        match &column.action {
            ColumnAction::Keep => Edit::Keep,
            ColumnAction::Mask { strategy, .. } => {
                self.mask_whole(column.repr, *strategy, value, row)
            }
            ColumnAction::Scan => self.scan(column.repr, value, row),
            ColumnAction::Withhold => Edit::Null,
        }
    }

    fn mask_whole(
        &self,
        repr: Repr,
        strategy: Strategy,
        value: &[u8],
        row: &mut MaskedRow,
    ) -> Edit {
        let start = row.arena.len();
        match repr {
            Repr::Text { padded } => {
                // bpchar blanks are padding: hash "ab" and "ab  " alike, keep real characters.
                let value = if padded {
                    value.trim_ascii_end()
                } else {
                    value
                };
                mask_into(strategy, value, &self.hasher, &mut row.arena);
            }
            Repr::Json => {
                row.text.clear();
                mask_into(strategy, value, &self.hasher, &mut row.text);
                json_string_into(&row.text, &mut row.arena);
            }
            Repr::TextArray
            | Repr::BinaryJson { .. }
            | Repr::OtherText
            | Repr::TextBytea
            | Repr::BinaryNumber { .. }
            | Repr::Opaque
            | Repr::Unreadable
            | Repr::UnreadableBuiltin => return Edit::Null,
        }
        Edit::Value(start..row.arena.len())
    }

    fn scan(&self, repr: Repr, value: &[u8], row: &mut MaskedRow) -> Edit {
        let prefix = match repr {
            Repr::Opaque => return Edit::Keep,
            Repr::Unreadable | Repr::UnreadableBuiltin => return Edit::Null,
            Repr::TextBytea => {
                let Scratch { found, bytea, .. } = &mut row.scratch;
                bytea_text_bytes(value, bytea);
                let hit = self.detectors.iter().any(|rule| {
                    found.clear();
                    rule.detector.find(bytea, found);
                    !found.is_empty()
                });
                return if hit { Edit::Null } else { Edit::Keep };
            }
            Repr::BinaryNumber { numeric } => {
                let Some(text) = binary_number_text(value, numeric) else {
                    return Edit::Null;
                };
                let found = &mut row.scratch.found;
                let hit = self.detectors.iter().any(|rule| {
                    found.clear();
                    rule.detector.find(text.as_bytes(), found);
                    !found.is_empty()
                });
                // A number cannot hold "***": a hit NULLs it, as in text.
                return if hit { Edit::Null } else { Edit::Keep };
            }
            Repr::BinaryJson { versioned: true } => {
                // Only jsonb version 1 exists; anything else cannot be read, so fail closed.
                if value.first() != Some(&1) {
                    return Edit::Null;
                }
                1
            }
            _ => 0,
        };
        let text = &value[prefix..];
        // Inside JSON or an array literal, masking must not leave half an
        // escape behind nor turn a kept character into syntax.
        let structured = matches!(repr, Repr::Json | Repr::TextArray | Repr::BinaryJson { .. });
        let scratch = &mut row.scratch;
        scratch.hits.clear();
        for rule in self.detectors.iter() {
            scratch.found.clear();
            rule.detector.find(text, &mut scratch.found);
            if scratch.found.is_empty() {
                // The common case: skip setting up the drain below.
                continue;
            }
            scratch.hits.extend(scratch.found.drain(..).map(|r| {
                let r = if structured {
                    whole_escapes(text, r)
                } else {
                    r
                };
                (r, rule.strategy)
            }));
        }
        if scratch.hits.is_empty() {
            return Edit::Keep;
        }
        if repr == Repr::OtherText {
            // "***" is not a valid number, enum label or custom type.
            return Edit::Null;
        }
        // Leftmost first, longest first; overlapping hits merge so no part of
        // either survives, masked with the strategy of the leftmost.
        scratch
            .hits
            .sort_unstable_by(|a, b| a.0.start.cmp(&b.0.start).then(b.0.end.cmp(&a.0.end)));
        let out = &mut row.arena;
        let start = out.len();
        out.extend_from_slice(&value[..prefix]);
        let mut cursor = 0;
        let mut hits = scratch.hits.iter().cloned();
        let mut current = hits.next();
        while let Some((range, strategy)) = current.take() {
            let mut end = range.end;
            for (next, next_strategy) in hits.by_ref() {
                if next.start < end {
                    end = end.max(next.end);
                } else {
                    current = Some((next, next_strategy));
                    break;
                }
            }
            out.extend_from_slice(&text[cursor..range.start]);
            let masked_at = out.len();
            mask_into(strategy, &text[range.start..end], &self.hasher, out);
            if structured {
                for b in &mut out[masked_at..] {
                    if matches!(*b, b'"' | b'\\') {
                        *b = b'*';
                    }
                }
            }
            cursor = end;
        }
        out.extend_from_slice(&text[cursor..]);
        Edit::Value(start..out.len())
    }
}

/// One row after [`ResultPlan::mask`]: what happened to each value, and the
/// new values back to back. Kept by the session across rows, so that
/// masking allocates only while its buffers grow.
#[derive(Debug, Default)]
pub struct MaskedRow {
    edits: Vec<Edit>,
    arena: Vec<u8>,
    /// A whole-value mask before it becomes a JSON string.
    text: Vec<u8>,
    scratch: Scratch,
}

/// One value's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    Keep,
    /// Replaced by SQL NULL.
    Null,
    /// Replaced by these bytes of the arena.
    Value(Range<usize>),
}

/// Above this, a [`MaskedRow`]'s value buffers are released rather than kept
/// for the next row: one huge masked value must not stay allocated for the
/// rest of a long session.
const KEEP_ARENA_BYTES: usize = 1 << 20;

impl MaskedRow {
    fn clear(&mut self) {
        self.edits.clear();
        for buffer in [&mut self.arena, &mut self.text, &mut self.scratch.bytea] {
            if buffer.capacity() > KEEP_ARENA_BYTES {
                *buffer = Vec::new();
            } else {
                buffer.clear();
            }
        }
    }

    /// The masked row's values in order (`None` = NULL), given the same
    /// values [`ResultPlan::mask`] saw: unchanged ones are passed through.
    pub fn values<'a>(
        &'a self,
        original: impl ExactSizeIterator<Item = Option<&'a [u8]>> + 'a,
    ) -> impl ExactSizeIterator<Item = Option<&'a [u8]>> + 'a {
        original.zip(&self.edits).map(|(value, edit)| match edit {
            Edit::Keep => value,
            Edit::Null => None,
            Edit::Value(range) => Some(&self.arena[range.clone()]),
        })
    }
}

/// The decimal text of a binary int8 or numeric value, for the detectors;
/// `None` when it is malformed.
fn binary_number_text(value: &[u8], numeric: bool) -> Option<String> {
    if !numeric {
        return Some(i64::from_be_bytes(value.try_into().ok()?).to_string());
    }
    // ndigits, weight, sign, dscale, then ndigits base-10000 digits.
    let word = |at: usize| {
        value
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    if value.len() != 8 + 2 * ndigits {
        return None;
    }
    if sign & 0xC000 == 0xC000 {
        // NaN and the infinities: no digits to find.
        return Some(String::new());
    }
    let digit = |i: i32| {
        usize::try_from(i)
            .ok()
            .filter(|&i| i < ndigits)
            .and_then(|i| word(8 + 2 * i))
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    }
    // Formatting into `out` itself: one allocation per value, not per group.
    for i in 0..=weight {
        let d = digit(i);
        let _ = if i == 0 {
            write!(out, "{d}")
        } else {
            write!(out, "{d:04}")
        };
    }
    if dscale > 0 {
        out.push('.');
        let start = out.len();
        let mut i = weight + 1;
        while out.len() - start < dscale {
            let _ = write!(out, "{:04}", digit(i));
            i += 1;
        }
        out.truncate(start + dscale);
    }
    Some(out)
}

/// Widens a hit inside escaped text (a JSON string, an array literal) so it
/// never splits an escape sequence: `\nbob@x.com` matches from the `n`, and
/// masking from there would leave a dangling `\`. The start moves back over
/// the backslashes before it; an end after an odd run of backslashes (the
/// hit took the escape's `\` but not what it escapes) moves past the escaped
/// character, or past all of `\uXXXX`.
fn whole_escapes(text: &[u8], hit: Range<usize>) -> Range<usize> {
    let backslashes = |at: usize| text[..at].iter().rev().take_while(|&&b| b == b'\\').count();
    let start = hit.start - backslashes(hit.start);
    let mut end = hit.end;
    if backslashes(end) % 2 == 1 {
        end += if text.get(end) == Some(&b'u') { 5 } else { 1 };
    }
    start..end.min(text.len())
}

/// Detector hits of one value, kept to reuse their allocations.
#[derive(Debug, Default)]
struct Scratch {
    found: Vec<Range<usize>>,
    hits: Vec<(Range<usize>, Strategy)>,
    /// A bytea value as the bytes it spells: reused, since a table's bytea
    /// column is scanned on every row.
    bytea: Vec<u8>,
}

/// What detectors read of a text-format bytea or bytea[] value: the bytes
/// each `\x` hex run spells (runs apart, so two values never join into one
/// match), then the text itself for the escape format, where printable
/// bytes stand as themselves.
fn bytea_text_bytes(value: &[u8], out: &mut Vec<u8>) {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    out.clear();
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'x' && i > 0 && value[i - 1] == b'\\' {
            i += 1;
            while let (Some(h), Some(l)) = (
                value.get(i).copied().and_then(hex),
                value.get(i + 1).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 2;
            }
            out.push(b'\n');
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(value);
}
