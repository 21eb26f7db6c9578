//! `sessions export`: a recording as one JSON document, or its lines as
//! stored.

use std::io::Write;

use super::{
    super::escaped::Escaped, ExportFormat, judge::Judged, source::Source, verdict::describe,
};
#[cfg(test)]
use crate::recording::verify::Summary;
use crate::recording::{
    Event,
    verify::{Verdict, Visit},
};

pub(super) fn export(source: &Source, id: &str, format: ExportFormat) -> Result<Verdict, String> {
    match format {
        ExportFormat::Json => export_document(source, id),
        ExportFormat::Jsonl => export_lines(source, id),
    }
}

/// `--format json`: one document, written as the events are checked so
/// that none is held whole; the same text `serde_json` makes of the
/// document `{"events": [...], "session": ..., "verdict": ...}` (keys in
/// its order), the verdict last as it is known last.
pub(super) fn export_document(source: &Source, id: &str) -> Result<Verdict, String> {
    export_document_to(
        source,
        id,
        std::io::BufWriter::new(std::io::stdout().lock()),
    )
}

/// [`export_document`], onto `out`.
pub(super) fn export_document_to(
    source: &Source,
    id: &str,
    out: impl Write,
) -> Result<Verdict, String> {
    let mut doc = Document {
        out: Out::new(out),
        session: None,
        events: 0,
        error: None,
    };
    let Judged { verdict, found } = match source.load(id, &mut doc) {
        Ok(judged) => judged,
        Err(e) => {
            // Events are out already (found in review: the document was
            // left cut off): closed, with why it ends there as its
            // verdict, stdout is still one JSON document.
            if doc.events > 0 {
                doc.finish(&format!("not read to the end: {e}"))?;
            }
            return Err(e);
        }
    };
    doc.finish(&describe(&verdict, &found))?;
    Ok(verdict)
}

/// The document so far: how many events it lists, and the session of
/// the first.
struct Document<W: Write> {
    out: Out<W>,
    session: Option<String>,
    events: u64,
    /// An event that could not be written as JSON (none can: plain data).
    error: Option<String>,
}

impl<W: Write> Visit for Document<W> {
    fn event(&mut self, event: Event) {
        // Through a Value, as the document was made whole: its objects
        // have their keys sorted, where the event's own order is its
        // fields'.
        let text = serde_json::to_value(&event).and_then(|v| serde_json::to_string_pretty(&v));
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                self.error.get_or_insert_with(|| e.to_string());
                return;
            }
        };
        self.out.put(if self.events == 0 {
            b"{\n  \"events\": [\n"
        } else {
            b",\n"
        });
        self.events += 1;
        self.session.get_or_insert(event.session);
        // Indented as an element of the array: JSON text has no newline
        // but between its tokens, so each line is moved right whole.
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                self.out.put(b"\n");
            }
            self.out.put(b"    ");
            self.out.put(line.as_bytes());
        }
    }
}

impl<W: Write> Document<W> {
    fn finish(mut self, verdict: &str) -> Result<(), String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.out.put(if self.events == 0 {
            b"{\n  \"events\": [],\n"
        } else {
            b"\n  ],\n"
        });
        let session = serde_json::to_string(&self.session).map_err(|e| e.to_string())?;
        let verdict = serde_json::to_string(verdict).map_err(|e| e.to_string())?;
        self.out
            .put(format!("  \"session\": {session},\n  \"verdict\": {verdict}\n}}\n").as_bytes());
        self.out.flush();
        Ok(())
    }
}

/// The recording's lines as stored: the exact bytes the chain hashed, so
/// anyone can check them again without chokepoint (`hash` is SHA-256 of
/// `prev_hash`, a newline and the event's bytes), and fields a newer
/// gateway wrote survive an older reader.
pub(super) fn export_lines(source: &Source, id: &str) -> Result<Verdict, String> {
    export_lines_to(
        source,
        id,
        std::io::BufWriter::new(std::io::stdout().lock()),
        std::io::stderr().lock(),
    )
}

/// [`export_lines`], onto `out` and `err`, copied as they are read. The
/// verdict goes through [`Escaped`] (the lines do not: they are the
/// evidence, byte for byte): found in review, a tampered verdict's
/// reason can quote the file.
pub(super) fn export_lines_to(
    source: &Source,
    id: &str,
    out: impl Write,
    err: impl Write,
) -> Result<Verdict, String> {
    let mut copy = Copy {
        out: Out::new(out),
        tail: Vec::new(),
    };
    let Judged { verdict, found } = source.load(id, &mut copy)?;
    copy.finish(&verdict);
    let _ = writeln!(Escaped(err), "-- {}", describe(&verdict, &found));
    Ok(verdict)
}

/// What `export --format jsonl` prints, the verdict on it and what it
/// was reached on.
#[cfg(test)]
pub(super) fn stored_lines(
    source: &Source,
    id: &str,
) -> Result<(Verdict, Summary, Vec<u8>), String> {
    let mut copy = Copy {
        out: Out::new(Vec::new()),
        tail: Vec::new(),
    };
    let Judged { verdict, found } = source.load(id, &mut copy)?;
    Ok((verdict.clone(), found, copy.finish(&verdict)))
}

/// A copy of the recording's bytes as they are read.
struct Copy<W: Write> {
    out: Out<W>,
    /// A last line cut short, held until the verdict says what it is.
    tail: Vec<u8>,
}

impl<W: Write> Visit for Copy<W> {
    fn copies(&self) -> bool {
        true
    }

    fn stored(&mut self, bytes: &[u8]) {
        self.out.put(bytes);
    }

    fn torn(&mut self, tail: &[u8]) {
        tail.clone_into(&mut self.tail);
    }
}

impl<W: Write> Copy<W> {
    /// Ends the copy; its writer.
    fn finish(mut self, verdict: &Verdict) -> W {
        // A running session's last line may be half-written: left out, as
        // verify leaves it out. A cut line of any other is the evidence of
        // tampering and goes out with the rest.
        if matches!(verdict, Verdict::Tampered { .. }) {
            self.out.put(&self.tail);
        }
        self.out.flush();
        self.out.inner
    }
}

/// Standard output as a command streams to it: the first write that
/// fails is kept for the exit code, as every other output (quiet on a
/// closed pipe), and nothing more is written; reading and checking go on,
/// for the verdict.
struct Out<W: Write> {
    inner: W,
    failed: bool,
}

impl<W: Write> Out<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            failed: false,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        if !self.failed
            && let Err(e) = self.inner.write_all(bytes)
        {
            self.failed = true;
            super::super::output::record(&e);
        }
    }

    fn flush(&mut self) {
        if !self.failed
            && let Err(e) = self.inner.flush()
        {
            self.failed = true;
            super::super::output::record(&e);
        }
    }
}
