//! COPY's CSV format, one field at a time, byte for byte as PostgreSQL's
//! `CopyAttributeOutCSV` spells it.
use super::options::CsvOptions;

/// Appends `value` (`None`: SQL NULL) to `out`. `force`: the column is
/// in FORCE_QUOTE. `single`: the row has this one column, where a value
/// `\.` alone would read back as the end of the data.
pub fn encode(value: Option<&[u8]>, force: bool, single: bool, o: &CsvOptions, out: &mut Vec<u8>) {
    let Some(value) = value else {
        out.extend_from_slice(&o.null);
        return;
    };
    // A value spelled like NULL is quoted so that it does not read back
    // as one.
    let quoted = force
        || value == o.null.as_slice()
        || (single && value == b"\\.")
        || value
            .iter()
            .any(|&b| b == o.delimiter || b == o.quote || b == b'\n' || b == b'\r');
    if !quoted {
        out.extend_from_slice(value);
        return;
    }
    out.push(o.quote);
    for &b in value {
        if b == o.quote || b == o.escape {
            out.push(o.escape);
        }
        out.push(b);
    }
    out.push(o.quote);
}
