//! The COPY the client sees, made from a query's (masked) rows: the
//! CopyOutResponse, a header, one CopyData per row, and binary COPY's
//! file header and trailer, sent as PostgreSQL sends them.
use super::{
    csv,
    options::{CopyFormat, ForceQuote},
    text,
};

/// Binary COPY's file signature, flags (none) and header extension length (0).
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Spells one COPY's rows.
#[derive(Debug)]
pub struct Encoder {
    format: CopyFormat,
    /// The query's columns the COPY sends, by index (a table's generated
    /// columns are not among them).
    keep: Vec<usize>,
    /// Per sent column: quoted whatever its value (CSV's FORCE_QUOTE).
    forced: Vec<bool>,
    /// Binary COPY's file header, sent with the first row (or the trailer).
    prefix: Option<&'static [u8]>,
}

impl Encoder {
    /// `names`: the query's column names; `keep`: which of them the COPY
    /// sends. Errors as the server would when FORCE_QUOTE names a column
    /// the COPY does not send.
    pub fn new(format: CopyFormat, names: &[&str], keep: Vec<usize>) -> Result<Self, String> {
        let forced = match &format {
            CopyFormat::Csv(o) => match &o.force_quote {
                ForceQuote::None => vec![false; keep.len()],
                ForceQuote::All => vec![true; keep.len()],
                ForceQuote::Columns(columns) => {
                    for column in columns {
                        if !keep.iter().any(|&i| names.get(i) == Some(&column.as_str())) {
                            return Err(format!(
                                "FORCE_QUOTE column \"{column}\" not referenced by COPY"
                            ));
                        }
                    }
                    // Each name quotes the first column of that name, as
                    // the server maps it.
                    let mut forced = vec![false; keep.len()];
                    for column in columns {
                        if let Some(n) = keep
                            .iter()
                            .position(|&i| names.get(i) == Some(&column.as_str()))
                        {
                            forced[n] = true;
                        }
                    }
                    forced
                }
            },
            _ => vec![false; keep.len()],
        };
        let prefix = matches!(format, CopyFormat::Binary).then_some(BINARY_HEADER);
        Ok(Self {
            format,
            keep,
            forced,
            prefix,
        })
    }

    /// The query's columns the COPY sends, by index.
    pub fn kept(&self) -> &[usize] {
        &self.keep
    }

    /// The CopyOutResponse's body: the overall format and each column's.
    pub fn response(&self) -> Vec<u8> {
        let binary = u8::from(matches!(self.format, CopyFormat::Binary));
        let mut body = vec![binary];
        // A row of more than 32767 columns cannot come from the server
        // (its tables stop at 1600), nor from a DataRow's i16 count.
        body.extend_from_slice(&(self.keep.len() as i16).to_be_bytes());
        for _ in &self.keep {
            body.extend_from_slice(&i16::from(binary).to_be_bytes());
        }
        body
    }

    /// The header line (column names), when the COPY asked for one.
    pub fn header(&self, names: &[&str]) -> Option<Vec<u8>> {
        let (delimiter, wanted) = match &self.format {
            CopyFormat::Text(o) => (o.delimiter, o.header),
            CopyFormat::Csv(o) => (o.delimiter, o.header),
            CopyFormat::Binary => return None,
        };
        if !wanted {
            return None;
        }
        let mut out = Vec::new();
        let single = self.keep.len() == 1;
        for (n, &i) in self.keep.iter().enumerate() {
            if n > 0 {
                out.push(delimiter);
            }
            let name = names.get(i).copied().unwrap_or("").as_bytes();
            match &self.format {
                CopyFormat::Text(o) => text::encode(Some(name), o, &mut out),
                CopyFormat::Csv(o) => csv::encode(Some(name), false, single, o, &mut out),
                CopyFormat::Binary => {}
            }
        }
        out.push(b'\n');
        Some(out)
    }

    /// One row's CopyData payload from the query's values (`None`: NULL).
    pub fn row(&mut self, values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(prefix) = self.prefix.take() {
            out.extend_from_slice(prefix);
        }
        let value = |i: usize| values.get(i).copied().flatten();
        let single = self.keep.len() == 1;
        match &self.format {
            CopyFormat::Binary => {
                out.extend_from_slice(&(self.keep.len() as i16).to_be_bytes());
                for &i in &self.keep {
                    match value(i) {
                        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                        Some(v) => {
                            // A DataRow's value fits an i32 length: it came in one.
                            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            out.extend_from_slice(v);
                        }
                    }
                }
                return out;
            }
            CopyFormat::Text(o) => {
                for (n, &i) in self.keep.iter().enumerate() {
                    if n > 0 {
                        out.push(o.delimiter);
                    }
                    text::encode(value(i), o, &mut out);
                }
            }
            CopyFormat::Csv(o) => {
                for (n, &i) in self.keep.iter().enumerate() {
                    if n > 0 {
                        out.push(o.delimiter);
                    }
                    csv::encode(value(i), self.forced[n], single, o, &mut out);
                }
            }
        }
        out.push(b'\n');
        out
    }

    /// What follows the last row: binary COPY's trailer (with its header
    /// when there were no rows), nothing for text and CSV.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.format, CopyFormat::Binary) {
            return None;
        }
        let mut out = self.prefix.take().map(<[u8]>::to_vec).unwrap_or_default();
        out.extend_from_slice(&(-1i16).to_be_bytes());
        Some(out)
    }
}
