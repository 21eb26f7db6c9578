//! `COPY … TO STDOUT` on a target with masking rules.
//!
//! A COPY's rows carry no RowDescription, and describing its query ahead
//! of it, on any connection, leaves a moment in which its names can be
//! made to mean another table (found in review: a schema renamed by
//! another session takes no lock the COPY waits for, so the COPY read a
//! table the description never saw, and its rows went out unmasked). So
//! such a COPY is never sent. The gateway runs the COPY's query itself on
//! the job's session, as a portal whose Describe reports exactly the
//! columns that portal returns, masks its rows as any query's, and spells
//! them as the COPY would have ([`encode`]): the client sees a COPY.
//!
//! * [`masked_copy`] finds such a COPY and the query that runs in its place;
//! * [`options`] reads and checks its options, as the server would have;
//! * [`encode`], [`text`] and [`csv`] spell the rows.
pub mod csv;
pub mod encode;
pub mod options;
pub mod text;

use pg_query::{
    NodeEnum,
    protobuf::{CopyStmt, Token},
};

pub use self::options::CopyFormat;

/// A `COPY … TO STDOUT` and what runs in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    /// The COPY's own query, as the job wrote it; for `COPY t (a, b)`,
    /// `SELECT "a", "b" FROM ONLY t` (COPY reads no child tables).
    pub query: String,
    /// `Some` when the COPY names a table: what it may copy is checked
    /// once the query's columns are known ([`TableCopy`]).
    pub table: Option<TableCopy>,
    pub format: CopyFormat,
}

/// A COPY of a table by name. PostgreSQL copies only a plain table that
/// way, and leaves out its generated columns unless they are listed
/// (then it refuses them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// Its name and schema (if qualified), as the parser read them: a
    /// column from another table is a view's.
    pub name: String,
    pub schema: Option<String>,
    pub columns_listed: bool,
}

/// The text's `COPY … TO STDOUT`, if it has one. `Err` when it has one
/// that the gateway cannot run in its place: not the only statement of
/// its text, options the server would refuse, or a query that is not one
/// a COPY runs.
pub fn masked_copy(sql: &str) -> Result<Option<CopyOut>, String> {
    // Parsing and deparsing recurse as deep as the text nests: off the
    // worker's stack when that is deep, as for classification.
    crate::protocols::postgres::classify::guarded(sql, || Ok(find(sql)))
        .map_err(|e| e.to_string())?
}

fn find(sql: &str) -> Result<Option<CopyOut>, String> {
    let parsed = pg_query::parse(sql).map_err(|e| e.to_string())?;
    let statements = &parsed.protobuf.stmts;
    let copy =
        statements.iter().find_map(
            |raw| match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
                Some(NodeEnum::CopyStmt(copy))
                    if !copy.is_from && !copy.is_program && copy.filename.is_empty() =>
                {
                    Some(copy)
                }
                _ => None,
            },
        );
    let Some(copy) = copy else {
        return Ok(None);
    };
    // What runs in its place is sent alone: another statement of the
    // text would run apart from it, outside its implicit transaction.
    if statements.len() > 1 {
        return Err("it is not the only statement of its query string".into());
    }
    let format = options::format(copy)?;
    let (query, table) = match copy.query.as_ref().and_then(|q| q.node.as_ref()) {
        Some(query) => (restated_query(sql, query)?, None),
        None => table_query(copy)?,
    };
    Ok(Some(CopyOut {
        query,
        table,
        format,
    }))
}

/// The COPY's query, as the job wrote it between the COPY's parentheses
/// (not deparsed: what runs is the job's own text). Checked to parse to
/// the same tree, and to be what COPY runs: a SELECT without INTO (run
/// alone, INTO would do what the COPY refuses). A data-modifying query
/// (`COPY (DELETE … RETURNING *)`) is refused: PostgreSQL treats its
/// table's rules and triggers under COPY in ways a plain statement does
/// not (it refuses DO ALSO rules, found in review), and the statement
/// itself, with RETURNING, returns the same rows masked.
fn restated_query(sql: &str, query: &NodeEnum) -> Result<String, String> {
    let text = parenthesized(sql)?;
    let parsed = pg_query::parse(text).map_err(|e| e.to_string())?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Err("its query cannot be restated alone".into());
    };
    let Some(alone) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return Err("its query cannot be restated alone".into());
    };
    let same = match (alone.deparse(), query.deparse()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return Err("its query cannot be restated alone".into());
    }
    match alone {
        NodeEnum::SelectStmt(select) if has_into(select) => {
            Err("COPY (SELECT INTO) is not supported".into())
        }
        NodeEnum::SelectStmt(_) => Ok(text.to_owned()),
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_) => Err(
            "a data-modifying COPY query is not run under masking: run the statement with RETURNING instead"
                .into(),
        ),
        _ => Err("its query is not one COPY runs".into()),
    }
}

/// The text between `COPY (` and its matching `)`, by the server's own
/// lexer (a parenthesis in a string or comment is not one).
fn parenthesized(sql: &str) -> Result<&str, String> {
    let scanned = pg_query::scan(sql).map_err(|e| e.to_string())?;
    let comment = [Token::SqlComment as i32, Token::CComment as i32];
    let mut tokens = scanned
        .tokens
        .iter()
        .filter(|t| !comment.contains(&t.token));
    let unreadable = || "its query cannot be restated alone".to_owned();
    if tokens.next().map(|t| t.token) != Some(Token::Copy as i32) {
        return Err(unreadable());
    }
    let open = tokens
        .next()
        .filter(|t| t.token == Token::Ascii40 as i32)
        .ok_or_else(unreadable)?;
    let mut depth = 1u32;
    for t in tokens {
        if t.token == Token::Ascii40 as i32 {
            depth += 1;
        } else if t.token == Token::Ascii41 as i32 {
            depth -= 1;
            if depth == 0 {
                let (start, end) = (usize::try_from(open.end), usize::try_from(t.start));
                return match (start, end) {
                    (Ok(start), Ok(end)) => sql.get(start..end).ok_or_else(unreadable),
                    _ => Err(unreadable()),
                };
            }
        }
    }
    Err(unreadable())
}

/// Whether a SELECT (or an arm of its set operation) writes INTO a table.
fn has_into(select: &pg_query::protobuf::SelectStmt) -> bool {
    select.into_clause.is_some()
        || [&select.larg, &select.rarg]
            .into_iter()
            .flatten()
            .any(|arm| has_into(arm))
}

/// `COPY t (a, b)` → `SELECT "a", "b" FROM ONLY "s"."t"`.
fn table_query(copy: &CopyStmt) -> Result<(String, Option<TableCopy>), String> {
    let relation = copy
        .relation
        .as_ref()
        .ok_or("COPY names neither a table nor a query")?;
    let mut listed: Vec<&str> = Vec::new();
    for n in &copy.attlist {
        if let Some(NodeEnum::String(s)) = n.node.as_ref() {
            if listed.contains(&s.sval.as_str()) {
                return Err(format!("column \"{}\" specified more than once", s.sval));
            }
            listed.push(&s.sval);
        }
    }
    let columns: Vec<String> = listed.iter().map(|c| quote_ident(c)).collect();
    let columns_listed = !columns.is_empty();
    let columns = if columns_listed {
        columns.join(", ")
    } else {
        "*".to_owned()
    };
    let mut name = String::new();
    for part in [&relation.catalogname, &relation.schemaname] {
        if !part.is_empty() {
            name.push_str(&quote_ident(part));
            name.push('.');
        }
    }
    name.push_str(&quote_ident(&relation.relname));
    let query = format!("SELECT {columns} FROM ONLY {name}");
    Ok((
        query,
        Some(TableCopy {
            name: relation.relname.clone(),
            schema: (!relation.schemaname.is_empty()).then(|| relation.schemaname.clone()),
            columns_listed,
        }),
    ))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests;
