//! `sessions export`: a recording as one JSON document, or its lines as
//! stored.

use std::io::Write;

use super::{
    super::escaped::Escaped, super::output::say, ExportFormat, judge::Judged, source::Source,
    verdict::describe,
};
use crate::recording::verify::{Summary, Verdict};

pub(super) fn export(source: &Source, id: &str, format: ExportFormat) -> Result<Verdict, String> {
    match format {
        ExportFormat::Json => export_document(source, id),
        ExportFormat::Jsonl => export_lines(source, id),
    }
}

pub(super) fn export_document(source: &Source, id: &str) -> Result<Verdict, String> {
    let Judged {
        verdict,
        found,
        events,
    } = source.load(id, true)?;
    let doc = serde_json::json!({
        "session": events.first().map(|e| e.session.clone()),
        "verdict": describe(&verdict, &found),
        "events": events,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    say!("{text}");
    Ok(verdict)
}

/// The recording's lines as stored: the exact bytes the chain hashed, so
/// anyone can check them again without chokepoint (`hash` is SHA-256 of
/// `prev_hash`, a newline and the event's bytes), and fields a newer
/// gateway wrote survive an older reader.
pub(super) fn export_lines(source: &Source, id: &str) -> Result<Verdict, String> {
    export_lines_to(
        source,
        id,
        std::io::stdout().lock(),
        std::io::stderr().lock(),
    )
}

/// [`export_lines`], onto `out` and `err`. The verdict goes through
/// [`Escaped`] (the lines do not: they are the evidence, byte for byte):
/// found in review, a tampered verdict's reason can quote the file.
pub(super) fn export_lines_to(
    source: &Source,
    id: &str,
    mut out: impl Write,
    err: impl Write,
) -> Result<Verdict, String> {
    let (verdict, found, lines) = stored_lines(source, id)?;
    // Kept for the exit code, as every other output (quiet on a closed
    // pipe); the verdict still goes to stderr.
    if let Err(e) = out.write_all(&lines).and_then(|()| out.flush()) {
        super::super::output::record(&e);
    }
    let _ = writeln!(Escaped(err), "-- {}", describe(&verdict, &found));
    Ok(verdict)
}

/// What `export --format jsonl` prints, the verdict on it and what it
/// was reached on.
pub(super) fn stored_lines(
    source: &Source,
    id: &str,
) -> Result<(Verdict, Summary, Vec<u8>), String> {
    let mut data = source.read(id)?;
    let Judged { verdict, found, .. } = source
        .judge(id, &data[..], false)
        .map_err(|e| e.to_string())?;
    // A running session's last line may be half-written: left out, as
    // verify leaves it out. A cut line of any other is the evidence of
    // tampering and goes out with the rest.
    if !matches!(verdict, Verdict::Tampered { .. }) {
        data.truncate(data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
    }
    Ok((verdict, found, data))
}
