//! What a policy that fails to load reports: every problem found, each at its file:line:col.
use std::{fmt, path::PathBuf};

/// One problem in one policy file.
///
/// `line` and `col` are 1-based (`col` counts characters, as editors do);
/// both are 0 when the problem has no position, e.g. an unreadable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match (self.file.as_os_str().is_empty(), self.line) {
            (true, _) => f.write_str(&self.message),
            (false, 0) => write!(f, "{file}: {}", self.message),
            (false, line) => write!(f, "{file}:{line}:{}: {}", self.col, self.message),
        }
    }
}

/// Every problem found while loading a policy, in file load order then
/// position order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", one_per_line(.0))]
pub struct PolicyErrors(pub Vec<Diagnostic>);

fn one_per_line(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    lines.join("\n")
}
