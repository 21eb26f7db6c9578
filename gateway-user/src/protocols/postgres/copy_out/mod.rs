//! `COPY … TO STDOUT` on a target with masking rules.
//!
//! COPY rows carry no RowDescription, so the session learns their layout
//! by describing the equivalent query (`SELECT cols FROM table`, or the
//! COPY's own query) on the job's own session just before the COPY runs,
//! plans masking as for a query result, and rewrites each CopyData row
//! (the server sends exactly one row per CopyData). Rows are decoded in
//! the COPY's own format:
//!
//! * [`text`]: tab-separated with backslash escapes (the default);
//! * [`csv`]: quoted fields, any delimiter, quote and escape.
//!
//! Binary COPY and options that change how values are spelled beyond those
//! (`ENCODING`) cannot be masked; the session refuses such a COPY with an
//! error instead of sending its rows unmasked.
pub mod csv;
pub mod text;

use std::borrow::Cow;

use bytes::Bytes;
use pg_query::{NodeEnum, protobuf::CopyStmt};

use crate::masking::ResultPlan;

/// One `COPY … TO STDOUT` of a query string, in statement order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    /// A query with the COPY's columns, to describe on the job's session.
    pub layout_sql: String,
    /// It is the first statement of its text: nothing the text ran before
    /// it can have changed what its names resolve to.
    pub first: bool,
    pub format: Result<CopyFormat, String>,
}

/// How the rows of a COPY are spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text(text::TextOptions),
    Csv(csv::CsvOptions),
    Binary,
}

impl CopyFormat {
    fn header(&self) -> bool {
        match self {
            Self::Text(o) => o.header,
            Self::Csv(o) => o.header,
            Self::Binary => false,
        }
    }
}

/// The `COPY … TO STDOUT` statements of `sql`, in order. Errors only when
/// the text does not parse (it was classified already, so it does) or is
/// nested too deeply to parse at all.
pub fn copy_outs(sql: &str) -> Result<Vec<CopyOut>, String> {
    // Parsing and deparsing recurse as deep as the text nests: off the
    // worker's stack when that is deep, as for classification.
    crate::protocols::postgres::classify::guarded(sql, || Ok(parse_copy_outs(sql)))
        .map_err(|e| e.to_string())?
}

fn parse_copy_outs(sql: &str) -> Result<Vec<CopyOut>, String> {
    let parsed = pg_query::parse(sql).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, raw) in parsed.protobuf.stmts.iter().enumerate() {
        let Some(NodeEnum::CopyStmt(copy)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        if copy.is_from || copy.is_program || !copy.filename.is_empty() {
            continue;
        }
        out.push(CopyOut {
            layout_sql: layout_sql(copy)?,
            first: i == 0,
            format: format(copy),
        });
    }
    Ok(out)
}

/// `COPY t (a, b)` → `SELECT "a", "b" FROM ONLY "s"."t"` (COPY reads no
/// child tables); `COPY (query)` → the query.
fn layout_sql(copy: &CopyStmt) -> Result<String, String> {
    if let Some(query) = copy.query.as_ref().and_then(|q| q.node.as_ref()) {
        return query
            .deparse()
            .map_err(|e| format!("cannot restate the COPY query: {e}"));
    }
    let relation = copy
        .relation
        .as_ref()
        .ok_or("COPY names neither a table nor a query")?;
    let columns: Vec<String> = copy
        .attlist
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(quote_ident(&s.sval)),
            _ => None,
        })
        .collect();
    let columns = if columns.is_empty() {
        "*".to_owned()
    } else {
        columns.join(", ")
    };
    let mut name = String::new();
    for part in [&relation.catalogname, &relation.schemaname] {
        if !part.is_empty() {
            name.push_str(&quote_ident(part));
            name.push('.');
        }
    }
    name.push_str(&quote_ident(&relation.relname));
    Ok(format!("SELECT {columns} FROM ONLY {name}"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The COPY's format from its options; an error names an option the
/// masking codec cannot honour.
fn format(copy: &CopyStmt) -> Result<CopyFormat, String> {
    let mut kind = "text".to_owned();
    let mut delimiter = None;
    let mut null = None;
    let mut header = false;
    let mut quote = None;
    let mut escape = None;
    for option in &copy.options {
        let Some(NodeEnum::DefElem(def)) = option.node.as_ref() else {
            continue;
        };
        let arg = def.arg.as_ref().and_then(|a| a.node.as_ref());
        let text = match arg {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            Some(NodeEnum::Integer(i)) => Some(i.ival.to_string()),
            Some(NodeEnum::Boolean(b)) => Some(b.boolval.to_string()),
            _ => None,
        };
        let name = def.defname.to_ascii_lowercase();
        match name.as_str() {
            "format" => kind = text.unwrap_or_default().to_ascii_lowercase(),
            "delimiter" => delimiter = Some(one_byte("DELIMITER", text)?),
            "quote" => quote = Some(one_byte("QUOTE", text)?),
            "escape" => escape = Some(one_byte("ESCAPE", text)?),
            "null" => null = Some(text.unwrap_or_default().into_bytes()),
            "header" => header = text.is_none_or(|t| is_true(&t)),
            // Only which unchanged fields get quotes: those are forwarded as
            // the server spelled them; masked ones are always quoted.
            "force_quote" => {}
            "encoding" if text.as_deref().is_some_and(is_utf8) => {}
            other => {
                return Err(format!(
                    "COPY option {} is not supported with masking",
                    other.to_ascii_uppercase()
                ));
            }
        }
    }
    match kind.as_str() {
        "text" => Ok(CopyFormat::Text(text::TextOptions {
            delimiter: delimiter.unwrap_or(b'\t'),
            null: null.unwrap_or_else(|| b"\\N".to_vec()),
            header,
        })),
        "csv" => {
            let quote = quote.unwrap_or(b'"');
            Ok(CopyFormat::Csv(csv::CsvOptions {
                delimiter: delimiter.unwrap_or(b','),
                null: null.unwrap_or_default(),
                header,
                quote,
                escape: escape.unwrap_or(quote),
            }))
        }
        "binary" => Ok(CopyFormat::Binary),
        other => Err(format!("unknown COPY format {other:?}")),
    }
}

fn one_byte(option: &str, text: Option<String>) -> Result<u8, String> {
    match text.as_deref().map(str::as_bytes) {
        Some([b]) if b.is_ascii() => Ok(*b),
        _ => Err(format!("COPY {option} must be a single ASCII character")),
    }
}

fn is_true(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "on" | "1" | "yes"
    )
}

fn is_utf8(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().replace(['-', '_'], "").as_str(),
        "utf8" | "unicode"
    )
}

/// One field of a row: how the server spelled it, and its value (`None` is
/// SQL NULL).
pub struct Field<'a> {
    pub raw: &'a [u8],
    pub value: Option<Cow<'a, [u8]>>,
}

/// Masks the rows of one COPY.
pub struct CopyRows {
    plan: std::sync::Arc<ResultPlan>,
    format: CopyFormat,
    /// The header line comes first and holds column names, not values.
    header_pending: bool,
}

impl CopyRows {
    /// Errors when rows of this format cannot be masked under `plan`.
    pub fn new(plan: std::sync::Arc<ResultPlan>, format: CopyFormat) -> Result<Self, String> {
        if matches!(format, CopyFormat::Binary) && !plan.is_noop() {
            return Err("binary COPY cannot be masked: use FORMAT text or csv".into());
        }
        Ok(Self {
            header_pending: format.header(),
            plan,
            format,
        })
    }

    /// The masked CopyData payload, or `None` to forward `row` as it is.
    /// An error means the row could not be read: the session must not
    /// forward it.
    pub fn mask(&mut self, row: &Bytes) -> Result<Option<Bytes>, String> {
        if std::mem::take(&mut self.header_pending) || self.plan.is_noop() {
            return Ok(None);
        }
        let (body, newline) = match row.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (&row[..], false),
        };
        let fields = match &self.format {
            CopyFormat::Text(o) => text::split(body, o),
            CopyFormat::Csv(o) => csv::split(body, o)?,
            CopyFormat::Binary => return Ok(None),
        };
        let values: Vec<Option<&[u8]>> = fields.iter().map(|f| f.value.as_deref()).collect();
        let Some(masked) = self.plan.apply(&values) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(row.len() + 16);
        for (i, (field, new)) in fields.iter().zip(&masked).enumerate() {
            if i > 0 {
                out.push(self.delimiter());
            }
            match new {
                // Unchanged: exactly as the server wrote it.
                Some(Cow::Borrowed(_)) => out.extend_from_slice(field.raw),
                None if field.value.is_none() => out.extend_from_slice(field.raw),
                value => match &self.format {
                    CopyFormat::Text(o) => text::encode(value.as_deref(), o, &mut out),
                    CopyFormat::Csv(o) => csv::encode(value.as_deref(), o, &mut out),
                    CopyFormat::Binary => {}
                },
            }
        }
        if newline {
            out.push(b'\n');
        }
        Ok(Some(Bytes::from(out)))
    }

    fn delimiter(&self) -> u8 {
        match &self.format {
            CopyFormat::Text(o) => o.delimiter,
            CopyFormat::Csv(o) => o.delimiter,
            CopyFormat::Binary => 0,
        }
    }
}

#[cfg(test)]
mod tests;
