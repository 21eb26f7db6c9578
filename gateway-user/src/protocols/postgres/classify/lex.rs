//! Just enough of PostgreSQL's lexer to tell code from comments and literals, byte by byte.
//!
//! Used where pg_query cannot be (before it is safe to call, or after it
//! failed): the depth estimate and the fallback of password redaction. The
//! rules follow PostgreSQL's scanner with `standard_conforming_strings = on`:
//! nested `/* */` comments, `''` doubling, backslash escapes only in E'',
//! `"…"` identifiers, `$tag$` quoting, and a literal's continuation across
//! a newline.

pub(crate) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

pub(crate) fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Whether `needle` occurs in `hay`, ASCII case ignored (PostgreSQL folds
/// only ASCII case in keywords and unquoted names).
pub(crate) fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// PostgreSQL's whitespace (`space` in its scanner): space, tab, newline,
/// carriage return, form feed and vertical tab. Not `u8::is_ascii_whitespace`,
/// which leaves out the vertical tab.
pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// The end of the whitespace or comment at `i`, if one starts there: what
/// the scanner skips between tokens.
pub(crate) fn skip_between_tokens(b: &[u8], i: usize) -> Option<usize> {
    match (b[i], b.get(i + 1)) {
        (c, _) if is_space(c) => Some(i + 1),
        (b'-', Some(b'-')) => Some(skip_line_comment(b, i)),
        (b'/', Some(b'*')) => Some(skip_block_comment(b, i)),
        _ => None,
    }
}

/// `-- …` up to the end of the line.
pub(crate) fn skip_line_comment(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
        i += 1;
    }
    i
}

/// `/* … */`, which nests in PostgreSQL.
pub(crate) fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// `'…'` starting at the quote at `i`, with `''` doubling, backslash escapes
/// when `escapes` (E''), and PostgreSQL's continuation of a literal across a
/// newline (`'a'<newline>'b'` is one literal, still in the same mode).
pub(crate) fn skip_string(b: &[u8], i: usize, escapes: bool) -> usize {
    let mut i = i + 1;
    loop {
        while i < b.len() {
            match b[i] {
                b'\\' if escapes => i += 2,
                b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                b'\'' => break,
                _ => i += 1,
            }
        }
        if i >= b.len() {
            return b.len();
        }
        i += 1; // the closing quote
        match continuation(b, i) {
            Some(reopen) => i = reopen + 1,
            None => return i,
        }
    }
}

/// If the literal that ended before `i` continues (whitespace holding a
/// newline, possibly `--` comments, then a quote), the position of that quote.
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    while i < b.len() {
        match b[i] {
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            b' ' | b'\t' | b'\x0b' | b'\x0c' => i += 1,
            b'-' if newline && b.get(i + 1) == Some(&b'-') => i = skip_line_comment(b, i),
            b'\'' if newline => return Some(i),
            _ => return None,
        }
    }
    None
}

/// `"…"` (or any quote with doubling and no escapes) from just after the opening quote.
pub(crate) fn skip_quoted(b: &[u8], mut i: usize, quote: u8) -> usize {
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// `$1` (a parameter) or `$tag$ … $tag$` (a dollar-quoted literal) at `i`.
pub(crate) fn skip_dollar(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        return j;
    }
    if b.get(j).is_some_and(|&c| is_ident_start(c)) {
        while j < b.len() && (is_ident_start(b[j]) || b[j].is_ascii_digit()) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        // Not a delimiter: PostgreSQL returns the `$` alone.
        return i + 1;
    }
    let delimiter = &b[i..=j];
    let body = j + 1;
    match b[body..]
        .windows(delimiter.len())
        .position(|w| w == delimiter)
    {
        Some(end) => body + end + delimiter.len(),
        None => b.len(),
    }
}
