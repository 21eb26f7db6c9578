//! A `COPY … TO STDOUT`'s options, read and checked as PostgreSQL's
//! `ProcessCopyOptions` checks them. The server never sees a COPY the
//! gateway runs as a query, so what it would refuse is refused here, with
//! its words, rather than spelled some other way.
use std::collections::HashSet;

use pg_query::{NodeEnum, protobuf::CopyStmt};

/// How the rows of a COPY are spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text(TextOptions),
    Csv(CsvOptions),
    Binary,
}

/// The text format: fields split by a delimiter (tab by default),
/// backslash escapes, NULL spelled `\N` (or the NULL option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    pub delimiter: u8,
    pub null: Vec<u8>,
    pub header: bool,
}

/// The CSV format: fields quoted where they must be, the escape
/// character (the quote by default) doubling a quote or itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub null: Vec<u8>,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
    pub force_quote: ForceQuote,
}

/// Which columns' values are quoted even where nothing needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ForceQuote {
    #[default]
    None,
    All,
    Columns(Vec<String>),
}

/// An option's argument as written.
enum Arg {
    None,
    Text(String),
    Int(i32),
    Star,
    Names(Vec<String>),
}

/// The COPY's format from its options; an error says, as the server
/// would, what it refuses.
pub fn format(copy: &CopyStmt) -> Result<CopyFormat, String> {
    let mut seen = HashSet::new();
    let mut kind = None;
    let mut delimiter = None;
    let mut null = None;
    let mut header = None;
    let mut quote = None;
    let mut escape = None;
    let mut force_quote = None;
    for option in &copy.options {
        let Some(NodeEnum::DefElem(def)) = option.node.as_ref() else {
            continue;
        };
        // Compared as written, as the server does: the parser already
        // folded an unquoted name to lower case.
        let name = def.defname.clone();
        if !seen.insert(name.clone()) {
            return Err("conflicting or redundant options".into());
        }
        let arg = match def.arg.as_ref().and_then(|a| a.node.as_ref()) {
            None => Arg::None,
            Some(NodeEnum::String(s)) => Arg::Text(s.sval.clone()),
            Some(NodeEnum::Integer(i)) => Arg::Int(i.ival),
            Some(NodeEnum::Boolean(b)) => Arg::Text(b.boolval.to_string()),
            Some(NodeEnum::AStar(_)) => Arg::Star,
            Some(NodeEnum::List(list)) => Arg::Names(
                list.items
                    .iter()
                    .filter_map(|n| match n.node.as_ref() {
                        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            Some(_) => return Err(format!("option \"{name}\" has an unreadable argument")),
        };
        let text = |arg: Arg| match arg {
            Arg::Text(t) => Ok(t),
            Arg::Int(i) => Ok(i.to_string()),
            _ => Err(format!("{name} requires a string value")),
        };
        match name.as_str() {
            "format" => kind = Some(text(arg)?),
            "delimiter" => delimiter = Some(one_byte("delimiter", &text(arg)?)?),
            "null" => null = Some(text(arg)?.into_bytes()),
            "header" => header = Some(boolean(&name, arg)?),
            "quote" => quote = Some(one_byte("quote", &text(arg)?)?),
            "escape" => escape = Some(one_byte("escape", &text(arg)?)?),
            "force_quote" => {
                force_quote = Some(match arg {
                    Arg::Star => ForceQuote::All,
                    Arg::Names(names) => ForceQuote::Columns(names),
                    _ => {
                        return Err(
                            "argument to option \"force_quote\" must be a list of column names"
                                .into(),
                        );
                    }
                })
            }
            // The session's encoding is UTF8 (the gateway refuses others),
            // so only that changes nothing.
            "encoding" => {
                if !is_utf8(&text(arg)?) {
                    return Err(
                        "COPY option ENCODING other than the session's UTF8 is not supported with masking"
                            .into(),
                    );
                }
            }
            // FREEZE false changes nothing; true is for COPY FROM.
            "freeze" => {
                if boolean(&name, arg)? {
                    return Err("COPY FREEZE cannot be used with COPY TO".into());
                }
            }
            "force_not_null" | "force_null" | "default" | "on_error" => {
                return Err(format!(
                    "COPY {} cannot be used with COPY TO",
                    name.to_ascii_uppercase()
                ));
            }
            other => return Err(format!("option \"{other}\" not recognized")),
        }
    }
    let kind = kind.unwrap_or_else(|| "text".into());
    let binary = kind == "binary";
    let csv = kind == "csv";
    if !binary && !csv && kind != "text" {
        return Err(format!("COPY format \"{kind}\" not recognized"));
    }
    if binary && delimiter.is_some() {
        return Err("cannot specify DELIMITER in BINARY mode".into());
    }
    if binary && null.is_some() {
        return Err("cannot specify NULL in BINARY mode".into());
    }
    if binary && header.is_some() {
        return Err("cannot specify HEADER in BINARY mode".into());
    }
    if !csv && quote.is_some() {
        return Err("COPY quote available only in CSV mode".into());
    }
    if !csv && escape.is_some() {
        return Err("COPY escape available only in CSV mode".into());
    }
    if !csv && force_quote.is_some() {
        return Err("COPY force quote available only in CSV mode".into());
    }
    if binary {
        return Ok(CopyFormat::Binary);
    }
    let delimiter = delimiter.unwrap_or(if csv { b',' } else { b'\t' });
    let null = null.unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() });
    if delimiter == b'\n' || delimiter == b'\r' {
        return Err("COPY delimiter cannot be newline or carriage return".into());
    }
    if null.contains(&b'\n') || null.contains(&b'\r') {
        return Err("COPY null representation cannot use newline or carriage return".into());
    }
    // In text mode these would read back as escapes or data.
    if !csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&delimiter) {
        return Err(format!(
            "COPY delimiter cannot be \"{}\"",
            char::from(delimiter)
        ));
    }
    if null.contains(&delimiter) {
        return Err("COPY delimiter must not appear in the NULL specification".into());
    }
    let header = header.unwrap_or(false);
    if !csv {
        return Ok(CopyFormat::Text(TextOptions {
            delimiter,
            null,
            header,
        }));
    }
    let quote = quote.unwrap_or(b'"');
    if delimiter == quote {
        return Err("COPY delimiter and quote must be different".into());
    }
    if null.contains(&quote) {
        return Err("CSV quote character must not appear in the NULL specification".into());
    }
    Ok(CopyFormat::Csv(CsvOptions {
        delimiter,
        null,
        header,
        quote,
        escape: escape.unwrap_or(quote),
        force_quote: force_quote.unwrap_or_default(),
    }))
}

fn one_byte(option: &str, text: &str) -> Result<u8, String> {
    match text.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(format!("COPY {option} must be a single one-byte character")),
    }
}

/// As PostgreSQL's `defGetBoolean` reads one: no argument, 0 or 1, or
/// true/false/on/off in any case (`HEADER MATCH` is COPY FROM's only).
fn boolean(name: &str, arg: Arg) -> Result<bool, String> {
    match arg {
        Arg::None | Arg::Int(1) => Ok(true),
        Arg::Int(0) => Ok(false),
        Arg::Text(text) => match text.to_ascii_lowercase().as_str() {
            "true" | "on" => Ok(true),
            "false" | "off" => Ok(false),
            "match" => Err("cannot use \"match\" with HEADER in COPY TO".into()),
            _ => Err(format!("{name} requires a Boolean value")),
        },
        _ => Err(format!("{name} requires a Boolean value")),
    }
}

fn is_utf8(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().replace(['-', '_'], "").as_str(),
        "utf8" | "unicode"
    )
}
