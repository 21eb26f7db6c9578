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
//!
//! This needs prost's `no-recursion-limit` feature (a direct dependency
//! `prost = { version = "0.13", default-features = false, features =
//! ["no-recursion-limit"] }` turns it on for pg_query): prost's own limit of
//! 100 nested messages would refuse ordinary queries, and the stack is
//! bounded here instead.

use super::error::ClassifyError;
use super::lex::{
    is_ident_cont, is_ident_start, is_space, skip_block_comment, skip_dollar, skip_line_comment,
    skip_quoted, skip_string,
};

/// Units added per nesting group for nodes with no token of their own (SubLink, ResTarget, List…).
const GROUP_UNITS: usize = 4;

/// Units added per `WITH`: a nested WITH clause costs several times the
/// stack of a nested subquery of as many tokens.
const WITH_UNITS: usize = 8;

/// Stack bytes one unit may need across libpg_query, prost and the walk:
/// about twice the worst measured (NOT and unary-operator chains: ~34 KiB
/// per unit in a debug build, where prost's decoder has huge frames; ~3.4
/// KiB in release; most constructs need a third of that).
const STACK_PER_UNIT: usize = if cfg!(debug_assertions) {
    64 * 1024
} else {
    8 * 1024
};

/// Stack the caller's thread may spend on an inline parse: half of a 2 MiB
/// tokio worker (or test) thread.
const INLINE_STACK: usize = 1024 * 1024;

/// Estimates up to this are parsed on the caller's stack (128 in release, 16 in debug builds).
pub(crate) const INLINE_LIMIT: usize = INLINE_STACK / STACK_PER_UNIT;

/// The largest helper-thread stack reserved (virtual memory, touched only as deep as the parse goes).
const MAX_STACK: usize = 1024 * 1024 * 1024;

/// Estimates above this are refused.
pub(crate) const MAX_LIMIT: usize = MAX_STACK / STACK_PER_UNIT;

/// Stack for the helper thread beyond what the estimate asks for (a
/// statement with a CTE needs ~300 KiB before any nesting in a debug build).
const BASE_STACK: usize = 2 * 1024 * 1024;

// Calibration: for each construct (nested subqueries and EXISTS, `+` and
// `||` chains, unary operators, NOT, IS NULL, casts, COLLATE, `->`, ARRAY[,
// calls, ROW, xmlelement, UNION chains, JOINs, CASE, nested FROM and LATERAL
// subqueries, VALUES, window functions, nested WITH, DELETE … WHERE chains),
// find by bisection the smallest thread stack on which the full parse path
// (summary, `pg_query::parse`, walk) of N levels succeeds, subtract the one
// for a single level and divide by the estimate. Re-measure after upgrading
// pg_query or prost.

/// Runs `work` (which calls pg_query on `sql`) where the stack is deep enough
/// for `sql`. A panic inside (pg_query indexes into its own trees) becomes an
/// error, never a torn-down session.
pub(crate) fn guarded<T: Send>(
    sql: &str,
    work: impl FnOnce() -> Result<T, ClassifyError> + Send,
) -> Result<T, ClassifyError> {
    let estimate = estimate(sql);
    if estimate <= INLINE_LIMIT {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .unwrap_or_else(|_| Err(panicked()));
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
            .map_err(|e| {
                ClassifyError::internal(format!("cannot start a classifier thread: {e}"))
            })?;
        handle.join().unwrap_or_else(|_| Err(panicked()))
    })
}

fn panicked() -> ClassifyError {
    ClassifyError::internal("the SQL parser panicked".to_owned())
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
pub(crate) fn estimate(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut groups = vec![Group::default()];
    let mut worst = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let nested = groups.len() > 1;
        let top = groups
            .last_mut()
            .expect("the statement group is never popped");
        match c {
            c if is_space(c) => i += 1,
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
                } else if word.eq_ignore_ascii_case(b"with") {
                    top.element += WITH_UNITS;
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
