//! COPY's CSV format: fields split by a delimiter, optionally quoted;
//! inside quotes the escape character (the quote itself by default)
//! escapes a quote or itself. An unquoted field equal to the NULL string
//! (empty by default) is NULL; a quoted one never is.
use std::borrow::Cow;

use super::Field;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub null: Vec<u8>,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
}

/// The fields of one row (without its final newline; quoted fields may
/// hold newlines). Errors on an unterminated quote.
pub fn split<'a>(row: &'a [u8], o: &CsvOptions) -> Result<Vec<Field<'a>>, String> {
    let mut fields = Vec::new();
    let mut start = 0;
    loop {
        let (field, end) = if row.get(start) == Some(&o.quote) {
            quoted(row, start, o)?
        } else {
            let end = row[start..]
                .iter()
                .position(|&b| b == o.delimiter)
                .map_or(row.len(), |p| start + p);
            let raw = &row[start..end];
            let value = (raw != o.null.as_slice()).then_some(Cow::Borrowed(raw));
            (Field { raw, value }, end)
        };
        fields.push(field);
        if end >= row.len() {
            return Ok(fields);
        }
        start = end + 1;
    }
}

/// A quoted field starting at `start`; returns it and the index of the
/// delimiter (or end) after it.
fn quoted<'a>(row: &'a [u8], start: usize, o: &CsvOptions) -> Result<(Field<'a>, usize), String> {
    let mut value = Vec::new();
    let mut i = start + 1;
    loop {
        let Some(&b) = row.get(i) else {
            return Err("a CSV field from the server has no closing quote".into());
        };
        let next = row.get(i + 1).copied();
        if b == o.escape && next.is_some_and(|n| n == o.quote || n == o.escape) {
            // With escape == quote, `""` inside quotes is one quote.
            value.push(next.unwrap_or(b));
            i += 2;
        } else if b == o.quote {
            i += 1;
            break;
        } else {
            value.push(b);
            i += 1;
        }
    }
    // Nothing but the delimiter may follow a closing quote in COPY TO output.
    let end = row[i..]
        .iter()
        .position(|&b| b == o.delimiter)
        .map_or(row.len(), |p| i + p);
    Ok((
        Field {
            raw: &row[start..end],
            value: Some(Cow::Owned(value)),
        },
        end,
    ))
}

/// Appends `value` quoted (`None`: the NULL string, unquoted).
pub fn encode(value: Option<&[u8]>, o: &CsvOptions, out: &mut Vec<u8>) {
    let Some(value) = value else {
        out.extend_from_slice(&o.null);
        return;
    };
    out.push(o.quote);
    for &b in value {
        if b == o.quote || b == o.escape {
            out.push(o.escape);
        }
        out.push(b);
    }
    out.push(o.quote);
}
