//! A recording's verdict: its chain and seal, held against the host's
//! ledger and the anchor of its last fsync.

use std::io::BufRead;

use super::source::{Listed, Source, Store};
use crate::recording::{
    Event, files,
    ledger::{self, Outcome},
    verify::{self, Summary, Verdict, Visit},
};

impl Source {
    /// A listed recording's verdict; an error for a file that is not
    /// where its name says, or cannot be read.
    pub(super) fn load_listed(&self, listed: &Listed) -> Result<Judged, String> {
        let (Store::Files(dir), Some(path)) = (&self.store, &listed.path) else {
            return self.load(&listed.id, &mut ());
        };
        if let Some(why) = files::misplaced(dir, path) {
            return Err(why);
        }
        self.judge_file(&listed.id, path, &mut ())
    }

    /// A recording's verdict, showing `visit` its lines and events as
    /// they are checked (a command prints them as it goes).
    pub(super) fn load(&self, id: &str, visit: &mut impl Visit) -> Result<Judged, String> {
        match &self.store {
            Store::Files(dir) => self.judge_file(id, &files::find(dir, id)?, visit),
            Store::Database(db) => {
                let rows = db.rows(id)?;
                self.judge(id, rows, visit).map_err(|e| e.to_string())
            }
        }
    }

    /// Reads the file a line at a time: no command holds a recording
    /// whole, however big.
    pub(super) fn judge_file(
        &self,
        id: &str,
        path: &std::path::Path,
        visit: &mut impl Visit,
    ) -> Result<Judged, String> {
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let file = files::open(path).map_err(cannot)?;
        self.judge(id, file, visit).map_err(cannot)
    }

    /// Verifies recording `id`, read from `reader`. A recording of
    /// another session under this id (a file copied over another) is
    /// tampered, whatever its own chain says.
    pub(super) fn judge(
        &self,
        id: &str,
        reader: impl BufRead,
        visit: &mut impl Visit,
    ) -> std::io::Result<Judged> {
        // A session still running may be caught mid-write: its last line
        // is not a cut while the ledger has it open.
        let open = self.ledger.as_ref().is_some_and(|l| {
            let name = std::path::Path::new(id)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(id);
            l.entries
                .get(name)
                .is_some_and(|e| e.outcome == Outcome::Opened)
        });
        // A file named on the command line is expected to hold the
        // session its name says.
        let expected = match id.strip_suffix(".jsonl") {
            Some(path) => std::path::Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(path),
            None => id,
        };
        let sound = self.ledger_sound();
        let listed_as = |session: &str| {
            self.ledger
                .as_ref()
                .and_then(|l| l.entries.get(session))
                .or_else(|| sound.then(|| self.newer_entry(session)).flatten())
        };
        // Whatever the ledger says, a recording runs through where the
        // gateway last fsynced it (a prefix of anything it wrote later).
        // Known before reading, so the checker keeps that one line's
        // hash: by the expected session's entry, as one of any other
        // session is tampered below, whatever its anchor.
        let anchor = self
            .anchors
            .get(expected)
            .cloned()
            .or_else(|| listed_as(expected).and_then(ledger::Entry::anchor));
        let mut checker = verify::Checker::new(&self.trusted).watching(anchor.as_ref());
        let torn = verify::feed_to(reader, &mut checker, &mut Expecting { expected, visit })?;
        let checked = checker.finish(if open { 0 } else { torn });
        let listed = checked.summary.session().and_then(listed_as);
        let verdict = match &anchor {
            Some(a) => checked.against_anchor(checked.verdict.clone(), a),
            None => checked.verdict.clone(),
        };
        let verdict = verify::against_ledger(verdict, &checked.summary, listed, sound);
        // Without a sound ledger, a seal missing tells nothing: the
        // recording may have been cut short.
        let verdict = match (verdict, self.ledger_problem()) {
            (Verdict::Unsealed { events: n }, Some(p)) => Verdict::Tampered {
                line: n as usize + 1,
                seq: Some(n),
                reason: format!(
                    "the chain is intact through seq {} but has no seal, and the host's ledger, which tells a cut from a crash, is TAMPERED at line {} (seq {}): {}",
                    n.saturating_sub(1),
                    p.line,
                    p.seq,
                    p.reason
                ),
            },
            (verdict, _) => verdict,
        };
        if let Some(session) = checked.summary.session()
            && session != expected
        {
            let reason = format!(
                "the recording is of session {session}, not {expected}: it was put in place of the original"
            );
            return Ok(Judged {
                verdict: Verdict::Tampered {
                    line: 1,
                    seq: Some(0),
                    reason,
                },
                found: Summary::default(),
            });
        }
        Ok(Judged {
            verdict,
            found: checked.summary,
        })
    }
}

/// A recording's verdict, and what of its events tells it.
pub(super) struct Judged {
    pub(super) verdict: Verdict,
    pub(super) found: Summary,
}

/// Shows a command only the events of the session it asked for: a
/// recording of another session put in its place is tampered from its
/// first line, and nothing of it is shown as this one's. Its bytes as
/// stored still are (`export --format jsonl`: the evidence).
struct Expecting<'a, V> {
    expected: &'a str,
    visit: &'a mut V,
}

impl<V: Visit> Visit for Expecting<'_, V> {
    fn copies(&self) -> bool {
        self.visit.copies()
    }

    fn stored(&mut self, bytes: &[u8]) {
        self.visit.stored(bytes);
    }

    fn event(&mut self, event: Event) {
        if event.session == self.expected {
            self.visit.event(event);
        }
    }

    fn torn(&mut self, tail: &[u8]) {
        self.visit.torn(tail);
    }
}
