//! Statement classes, flags and table accesses under their policy names, held as bit sets so deciding allocates nothing.
use std::fmt;

use crate::protocols::postgres::classify::{Access, Flag, StatementClass};

/// The classifier's classes as the policy writes them, in bit order.
pub(super) const CLASS_NAMES: [&str; 7] = [
    "read",
    "write",
    "ddl",
    "dcl",
    "admin",
    "transaction",
    "other",
];

/// The classifier's flags as the policy writes them, in bit order.
pub(super) const FLAG_NAMES: [&str; 11] = [
    "delete_without_where",
    "update_without_where",
    "drop",
    "truncate",
    "data_modifying_cte",
    "procedural_code",
    "explain_analyze_write",
    "copy_program",
    "copy_file",
    "dangerous_function",
    "set_role",
];

pub(super) const ACCESS_NAMES: [&str; 2] = ["read", "write"];

/// Bit of a class in a [`Set`] of classes. Exhaustive on purpose: a class
/// added to the classifier stops the build here until the policy names it.
pub(super) fn class_bit(class: &StatementClass) -> usize {
    match class {
        StatementClass::Read => 0,
        StatementClass::Write => 1,
        StatementClass::Ddl => 2,
        StatementClass::Dcl => 3,
        StatementClass::Admin => 4,
        StatementClass::Transaction => 5,
        StatementClass::Other => 6,
    }
}

/// Bit of a flag in a [`Set`] of flags; exhaustive for the same reason.
pub(super) fn flag_bit(flag: &Flag) -> usize {
    match flag {
        Flag::DeleteWithoutWhere => 0,
        Flag::UpdateWithoutWhere => 1,
        Flag::Drop => 2,
        Flag::Truncate => 3,
        Flag::DataModifyingCte => 4,
        Flag::ProceduralCode => 5,
        Flag::ExplainAnalyzeWrite => 6,
        Flag::CopyProgram => 7,
        Flag::CopyFile => 8,
        Flag::DangerousFunction => 9,
        Flag::SetRole => 10,
    }
}

pub(super) fn access_bit(access: &Access) -> usize {
    match access {
        Access::Read => 0,
        Access::Write => 1,
    }
}

/// A set of classes, flags or accesses: bit `i` is entry `i` of the
/// matching `*_NAMES` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Set(u16);

impl Set {
    pub const EMPTY: Set = Set(0);

    /// Every entry of a table of `len` names.
    pub const fn all(len: usize) -> Set {
        Set((1 << len) - 1)
    }

    pub fn insert(&mut self, bit: usize) {
        self.0 |= 1 << bit;
    }

    pub fn contains(self, bit: usize) -> bool {
        self.0 & (1 << bit) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersects(self, other: Set) -> bool {
        self.0 & other.0 != 0
    }

    /// The names of the members, in table order.
    pub fn names(self, table: &'static [&'static str]) -> Names {
        Names { set: self, table }
    }
}

/// The members of a [`Set`] as `a, b, c`.
#[derive(Clone, Copy)]
pub(super) struct Names {
    set: Set,
    table: &'static [&'static str],
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (bit, name) in self.table.iter().enumerate() {
            if self.set.contains(bit) {
                if !first {
                    f.write_str(", ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// What `deny` and `approve` list: classes and flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Kinds {
    pub classes: Set,
    pub flags: Set,
}

impl Kinds {
    pub fn is_empty(self) -> bool {
        self.classes.is_empty() && self.flags.is_empty()
    }

    pub fn intersects(self, other: Kinds) -> bool {
        self.classes.intersects(other.classes) || self.flags.intersects(other.flags)
    }
}

impl fmt::Display for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classes = self.classes.names(&CLASS_NAMES);
        let flags = self.flags.names(&FLAG_NAMES);
        match (self.classes.is_empty(), self.flags.is_empty()) {
            (_, true) => write!(f, "{classes}"),
            (true, false) => write!(f, "{flags}"),
            (false, false) => write!(f, "{classes}, {flags}"),
        }
    }
}

fn position(table: &[&str], name: &str) -> Option<usize> {
    table.iter().position(|n| *n == name)
}

fn valid(table: &[&str]) -> String {
    table.join(", ")
}

/// A name in `allow`: classes only, since a flag marks something to stop,
/// not something to permit.
pub(super) fn parse_class(name: &str) -> Result<usize, String> {
    if let Some(bit) = position(&CLASS_NAMES, name) {
        return Ok(bit);
    }
    if position(&FLAG_NAMES, name).is_some() {
        return Err(format!(
            "{name:?} is a flag, and flags can only be denied or need approval: move it to deny or approve (classes for allow: {})",
            valid(&CLASS_NAMES)
        ));
    }
    Err(format!(
        "unknown statement class {name:?}; valid classes: {}",
        valid(&CLASS_NAMES)
    ))
}

/// A name in `deny` or `approve`: a class or a flag, added to `kinds`.
pub(super) fn parse_kind(name: &str, kinds: &mut Kinds) -> Result<(), String> {
    if let Some(bit) = position(&CLASS_NAMES, name) {
        kinds.classes.insert(bit);
    } else if let Some(bit) = position(&FLAG_NAMES, name) {
        kinds.flags.insert(bit);
    } else {
        return Err(format!(
            "unknown statement class or flag {name:?}; valid classes: {}; valid flags: {}",
            valid(&CLASS_NAMES),
            valid(&FLAG_NAMES)
        ));
    }
    Ok(())
}

/// A name in a table rule's `deny` or `approve`.
pub(super) fn parse_access(name: &str) -> Result<usize, String> {
    position(&ACCESS_NAMES, name).ok_or_else(|| {
        format!(
            "unknown table access {name:?}; valid accesses: {}",
            valid(&ACCESS_NAMES)
        )
    })
}
