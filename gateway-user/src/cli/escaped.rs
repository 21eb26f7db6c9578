//! Job-chosen text on the reader's terminal: shown, never obeyed.
use std::io::Write;

/// Standard output for recorded text, which the job chose (statements,
/// process names, values): terminal controls in it (escape sequences, a
/// carriage return that overwrites the line, bidi overrides that reorder
/// it) are shown as `\u{…}` instead of acting on the reader's terminal.
/// Newlines and tabs stay: statements span lines. A write that fails is
/// kept for the exit code ([`super::output`]), since callers print with
/// `let _ = writeln!(…)`.
pub(super) struct Escaped<W: Write>(pub(super) W);

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.escape(buf).inspect_err(super::output::record)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().inspect_err(super::output::record)
    }
}

impl<W: Write> Escaped<W> {
    fn escape(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if !text.chars().any(needs_escape) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if needs_escape(c) {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod escaped_tests {
    use std::io::Write;

    use super::Escaped;

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        let mut out = Escaped(Vec::new());
        write!(out, "DROP TABLE items /*\r\x1b[2K*/\n\tok \u{202E}cba").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "DROP TABLE items /*\\u{d}\\u{1b}[2K*/\n\tok \\u{202e}cba"
        );
    }
}
