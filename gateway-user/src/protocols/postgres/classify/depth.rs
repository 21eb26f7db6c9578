//! Keeps pg_query from overflowing the stack: estimates a text's nesting before parsing it.
//!
//! Why: PostgreSQL's grammar is iterative, but libpg_query walks the parse
//! tree recursively (summary, protobuf output) with no depth check, and so do
//! prost's decoder and `walk.rs`. `SELECT (SELECT (SELECT …` a thousand deep,
//! or `1+1+…` a few thousand terms long, aborts the whole gateway on a 2 MiB
//! stack. So before any pg_query call, a cheap lexer computes an upper bound
//! of the tree depth; a shallow text is parsed inline, a deeper one on a
//! thread with a stack sized for it, and an absurd one is refused.
//!
//! The bound: tree depth grows only through tokens. Inside one pair of
//! parentheses (or brackets), nodes stack up only within one comma-separated
//! element, except for UNION/INTERSECT/EXCEPT chains, which span commas
//! (`SELECT 1, 2 UNION SELECT 3, 4 UNION …`). So each group contributes
//! "tokens of its longest element + set operations + a constant", and the
//! estimate is the largest sum along a chain of nested groups. The lexer
//! follows PostgreSQL's rules for comments, quotes, E'' escapes, dollar quotes
//! and string continuation, so it never mistakes code for a literal.

use super::error::ClassifyError;
use super::lex::{is_ident_cont, is_ident_start, skip_block_comment, skip_dollar, skip_line_comment, skip_quoted, skip_string};

/// Units added per nesting group for nodes with no token of their own (SubLink, ResTarget, List…).
const GROUP_UNITS: usize = 4;

/// Stack bytes one unit may need across libpg_query, prost and the walk,
/// measured on the worst constructs found (see the module's tests) with a 2× margin.
const STACK_PER_UNIT: usize = 8 * 1024;

/// Estimates up to this are parsed on the caller's stack: 256 KiB worth,
/// comfortably inside a 2 MiB tokio worker stack.
pub(crate) const INLINE_LIMIT: usize = 32;

/// Estimates above this are refused: a 512 MiB stack reservation.
pub(crate) const MAX_LIMIT: usize = 64 * 1024;

/// Stack for the helper thread beyond what the estimate asks for.
const BASE_STACK: usize = 1024 * 1024;

/// Runs `work` (which calls pg_query on `sql`) where the stack is deep enough for `sql`.
pub(crate) fn guarded<T: Send>(
    sql: &str,
    work: impl FnOnce() -> Result<T, ClassifyError> + Send,
) -> Result<T, ClassifyError> {
    let estimate = estimate(sql);
    if estimate <= INLINE_LIMIT {
        return work();
    }
    if estimate > MAX_LIMIT {
        return Err(ClassifyError::TooDeep {
            estimate,
            limit: MAX_LIMIT,
        });
    }
    let stack = BASE_STACK + estimate * STACK_PER_UNIT;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("sql-classify".to_owned())
            .stack_size(stack)
            .spawn_scoped(scope, work)
            .map_err(|e| ClassifyError::internal(format!("cannot start a classifier thread: {e}")))?;
        handle
            .join()
            .unwrap_or_else(|_| Err(ClassifyError::internal("the classifier panicked".to_owned())))
    })
}

/// One parenthesized (or bracketed) group while lexing.
#[derive(Default)]
struct Group {
    /// Tokens of the current comma-separated element.
    element: usize,
    /// Tokens of the longest finished element.
    longest: usize,
    /// UNION/INTERSECT/EXCEPT keywords in the group.
    set_ops: usize,
    /// The deepest estimate of a nested group.
    deepest_child: usize,
}

impl Group {
    fn estimate(&self) -> usize {
        self.element.max(self.longest) + self.set_ops + GROUP_UNITS + self.deepest_child
    }

    fn end_element(&mut self) {
        self.longest = self.longest.max(self.element);
        self.element = 0;
    }
}

/// An upper bound (in units) of how deep the parse tree of `sql` can nest; see the module doc.
pub fn estimate(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut groups = vec![Group::default()];
    let mut worst = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let nested = groups.len() > 1;
        let top = groups.last_mut().expect("the statement group is never popped");
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => i += 1,
            b'-' if next == Some(b'-') => i = skip_line_comment(b, i),
            b'/' if next == Some(b'*') => i = skip_block_comment(b, i),
            b'\'' => {
                top.element += 1;
                i = skip_string(b, i, false);
            }
            b'"' => {
                top.element += 1;
                i = skip_quoted(b, i + 1, b'"');
            }
            b'$' => {
                top.element += 1;
                i = skip_dollar(b, i);
            }
            b'(' | b'[' => {
                top.element += 1;
                groups.push(Group::default());
                i += 1;
            }
            b')' | b']' => {
                if groups.len() > 1 {
                    let done = groups.pop().expect("checked above").estimate();
                    let parent = groups.last_mut().expect("checked above");
                    parent.deepest_child = parent.deepest_child.max(done);
                }
                i += 1;
            }
            b',' => {
                top.end_element();
                i += 1;
            }
            b';' => {
                if !nested {
                    // Statements are walked one at a time.
                    worst = worst.max(top.estimate());
                    *top = Group::default();
                } else {
                    // Rule actions `DO (stmt; stmt)` form a flat list.
                    top.end_element();
                }
                i += 1;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &b[start..i];
                top.element += 1;
                if word.eq_ignore_ascii_case(b"union")
                    || word.eq_ignore_ascii_case(b"intersect")
                    || word.eq_ignore_ascii_case(b"except")
                {
                    top.set_ops += 1;
                }
                // E'…' (and only a lone E at a token start) processes backslash escapes.
                if word.eq_ignore_ascii_case(b"e") && b.get(i) == Some(&b'\'') {
                    i = skip_string(b, i, true);
                }
            }
            c if c.is_ascii_digit() => {
                // Numbers; `.` and exponent signs count as tokens of their own (over-counting is safe).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                top.element += 1;
            }
            _ => {
                // Operators and punctuation, one token per byte.
                top.element += 1;
                i += 1;
            }
        }
    }
    // Unclosed groups: close them (the parser will reject the text anyway).
    while groups.len() > 1 {
        let done = groups.pop().expect("checked by the loop").estimate();
        let parent = groups.last_mut().expect("checked by the loop");
        parent.deepest_child = parent.deepest_child.max(done);
    }
    worst.max(groups[0].estimate())
}
