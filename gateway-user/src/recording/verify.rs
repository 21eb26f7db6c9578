//! Checking a recording: every line's hash, the links between lines, the
//! sequence numbers and the seal. The first problem is reported with its
//! line and `seq`, and a chain that is intact but has no seal (the gateway
//! stopped before the session ended) is told apart from a tampered one.
//! A recording is read a line at a time ([`Checker`]): it may be far
//! larger than the memory of the host checking it.
use std::io::{self, BufRead};

use super::{
    chain,
    event::{Body, Event},
    keys, ledger,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Intact and sealed by the expected key.
    Sealed { events: u64 },
    /// Intact and sealed by the expected key when the gateway started
    /// again: it had stopped (crashed, killed) before the session ended.
    Recovered { events: u64 },
    /// Intact, but the seal is missing: the session never ended cleanly
    /// (gateway killed) and the gateway has not started since, or it is
    /// still running.
    Unsealed { events: u64 },
    /// The first place where the recording is not what was written.
    Tampered {
        line: usize,
        seq: Option<u64>,
        reason: String,
    },
}

/// Verifies a recording's bytes; its seal must be by one of `trusted`
/// (public keys, hex). Returns the verdict and the events read up to the
/// first problem.
pub fn verify(data: &[u8], trusted: &[String]) -> (Verdict, Vec<Event>) {
    let mut checker = Checker::new(trusted).collecting();
    // A slice cannot fail to read.
    let torn = feed(data, &mut checker).unwrap_or_default();
    let checked = checker.finish(torn);
    (checked.verdict, checked.events)
}

/// What the rest of a verdict's handling needs of the events it was
/// reached on, instead of the events: a recording may be far larger than
/// the memory of the host checking it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Events read up to the first problem.
    pub events: u64,
    /// The first of them, the session start.
    pub first: Option<Event>,
    /// How many of them are statements (`list`).
    pub statements: u64,
    /// The last one's `mono_us` (a recovered seal repeats it).
    pub last_mono_us: u64,
    /// The last one's chain hash, when they are intact (the checker's:
    /// events alone do not carry it).
    pub last_hash: Option<String>,
    /// The seal that ends them, when one does.
    pub seal: Option<Seal>,
}

/// A seal's fields, as far as a verdict is told by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub final_hash: String,
    pub public_key: String,
    pub recovered: Option<String>,
}

impl Summary {
    /// The summary of events already read.
    pub fn of(events: &[Event]) -> Self {
        let seal = match events.last().map(|e| &e.body) {
            Some(Body::Seal {
                final_hash,
                public_key,
                recovered,
                ..
            }) => Some(Seal {
                final_hash: final_hash.clone(),
                public_key: public_key.clone(),
                recovered: recovered.clone(),
            }),
            _ => None,
        };
        Self {
            events: events.len() as u64,
            first: events.first().cloned(),
            statements: events
                .iter()
                .filter(|e| matches!(e.body, Body::Statement { .. }))
                .count() as u64,
            last_mono_us: events.last().map_or(0, |e| e.mono_us),
            last_hash: None,
            seal,
        }
    }

    /// The session of the first event.
    pub fn session(&self) -> Option<&str> {
        self.first.as_ref().map(|e| e.session.as_str())
    }
}

/// Checks a recording one line at a time. What it keeps does not grow
/// with the recording, unless it collects the events
/// ([`Checker::collecting`], for [`verify`] over bytes): every command and
/// the daemon's start check recordings of any size in the memory of their
/// longest line, and those that print events take each as it is checked
/// ([`Checker::push_event`], [`feed_to`]).
pub struct Checker<'a> {
    trusted: &'a [String],
    prev: String,
    /// Whole lines pushed, problem or not.
    lines: u64,
    /// Their bytes, newlines included.
    bytes: u64,
    summary: Summary,
    problem: Option<Verdict>,
    /// Index of the line whose hash [`Checked::runs_through`] holds
    /// against an anchor, and that hash once read.
    watch: Option<u64>,
    watched: Option<String>,
    events: Option<Vec<Event>>,
}

/// A checked recording.
#[derive(Debug)]
pub struct Checked {
    pub verdict: Verdict,
    pub summary: Summary,
    /// Every event read up to the first problem, when collected.
    pub events: Vec<Event>,
    /// Whole lines read.
    pub lines: u64,
    /// Their bytes, newlines included: where a torn last line begins.
    pub bytes: u64,
    watch: Option<u64>,
    watched: Option<String>,
}

impl<'a> Checker<'a> {
    /// Seals must be by one of `trusted` (public keys, hex).
    pub fn new(trusted: &'a [String]) -> Self {
        Self {
            trusted,
            prev: chain::GENESIS.to_owned(),
            lines: 0,
            bytes: 0,
            summary: Summary::default(),
            problem: None,
            watch: None,
            watched: None,
            events: None,
        }
    }

    /// Keeps every event read too ([`verify`] over bytes, which are in
    /// memory already).
    pub fn collecting(mut self) -> Self {
        self.events = Some(Vec::new());
        self
    }

    /// Keeps the hash of the line an anchor must be found at (its
    /// `events - 1`), for [`Checked::runs_through`].
    pub fn watching(mut self, anchor: Option<&ledger::Anchor>) -> Self {
        self.watch = anchor.and_then(|a| a.events.checked_sub(1));
        self
    }

    /// Whether the rest of the recording can only be counted: a problem
    /// was found and the anchor's line is behind.
    fn settled(&self) -> bool {
        self.problem.is_some() && self.watch.is_none_or(|at| at < self.lines)
    }

    /// The next whole line, without its newline.
    pub fn push(&mut self, line: &[u8]) {
        let _ = self.push_event(line);
    }

    /// [`Checker::push`], handing back the line's event when it is
    /// intact and chained to every line before it: what a command may
    /// print as it reads, before the verdict on the whole is known.
    pub fn push_event(&mut self, line: &[u8]) -> Option<Event> {
        let i = self.lines;
        self.lines += 1;
        self.bytes += line.len() as u64 + 1;
        if self.watch == Some(i) {
            self.watched = chain::split(line).ok().map(|(hash, _, _)| hash.to_owned());
        }
        if self.problem.is_some() {
            return None;
        }
        match self.check(i, line) {
            Ok(event) => Some(event),
            Err(verdict) => {
                self.problem = Some(verdict);
                None
            }
        }
    }

    fn check(&mut self, i: u64, line: &[u8]) -> Result<Event, Verdict> {
        let n = i as usize + 1;
        let expected_seq = i;
        if self.summary.seal.is_some() {
            return Err(tampered(
                n,
                Some(expected_seq),
                "a line follows the seal".into(),
            ));
        }
        let (hash, prev_hash, event) =
            chain::split(line).map_err(|why| tampered(n, Some(expected_seq), why.into()))?;
        if prev_hash != self.prev {
            return Err(tampered(
                n,
                Some(expected_seq),
                "prev_hash does not match the line before: a line was removed, inserted or moved"
                    .into(),
            ));
        }
        if chain::hash(&self.prev, event) != hash {
            return Err(tampered(
                n,
                Some(expected_seq),
                "the hash does not match the event: the line was changed".into(),
            ));
        }
        // Parsed whole, so an event this version does not read is caught
        // as before, and dropped at the end of the line unless collected.
        let parsed: Event = serde_json::from_slice(event).map_err(|e| {
            tampered(
                n,
                Some(expected_seq),
                format!("the event is not valid: {e}"),
            )
        })?;
        if parsed.seq != expected_seq {
            return Err(tampered(
                n,
                Some(expected_seq),
                format!("seq is {} where {expected_seq} belongs", parsed.seq),
            ));
        }
        if let Some(first) = self.summary.session()
            && first != parsed.session
        {
            return Err(tampered(
                n,
                Some(expected_seq),
                format!("the event belongs to session {}", parsed.session),
            ));
        }
        if i == 0 && !matches!(parsed.body, Body::SessionStart { .. }) {
            return Err(tampered(
                n,
                Some(0),
                "the first event is not the session start".into(),
            ));
        }
        if let Body::Seal {
            final_hash,
            public_key: sealer,
            signature,
            recovered,
        } = &parsed.body
        {
            if *final_hash != self.prev {
                return Err(tampered(
                    n,
                    Some(expected_seq),
                    "the seal does not name the hash of the event before it".into(),
                ));
            }
            if !self.trusted.contains(sealer) {
                return Err(tampered(
                    n,
                    Some(expected_seq),
                    format!(
                        "the seal names key {sealer}, which is not trusted here (trusted: {})",
                        self.trusted.join(", ")
                    ),
                ));
            }
            if !keys::verify(
                sealer,
                &parsed.session,
                final_hash,
                recovered.as_deref(),
                signature,
            ) {
                return Err(tampered(
                    n,
                    Some(expected_seq),
                    "the seal's signature does not verify".into(),
                ));
            }
            self.summary.seal = Some(Seal {
                final_hash: final_hash.clone(),
                public_key: sealer.clone(),
                recovered: recovered.clone(),
            });
        }
        hash.clone_into(&mut self.prev);
        let summary = &mut self.summary;
        summary.events += 1;
        summary.last_mono_us = parsed.mono_us;
        summary.statements += u64::from(matches!(parsed.body, Body::Statement { .. }));
        if i == 0 {
            summary.first = Some(parsed.clone());
        }
        if let Some(events) = &mut self.events {
            events.push(parsed.clone());
        }
        Ok(parsed)
    }

    /// The verdict, once every whole line was pushed; `torn`: how many
    /// bytes follow the last newline (a line cut short).
    pub fn finish(self, torn: u64) -> Checked {
        let mut summary = self.summary;
        let mut events = self.events.unwrap_or_default();
        let verdict = if torn > 0 {
            // Said before anything else: a cut file is the first thing
            // wrong with it, wherever its lines go wrong.
            summary = Summary::default();
            events = Vec::new();
            let line = self.lines as usize + 1;
            tampered(
                line,
                None,
                format!("the file ends inside line {line}: it was truncated"),
            )
        } else if self.lines == 0 {
            tampered(1, None, "the recording is empty".into())
        } else if let Some(problem) = self.problem {
            problem
        } else if summary.seal.as_ref().is_some_and(|s| s.recovered.is_some()) {
            Verdict::Recovered {
                events: summary.events,
            }
        } else if summary.seal.is_some() {
            Verdict::Sealed {
                events: summary.events,
            }
        } else {
            Verdict::Unsealed {
                events: summary.events,
            }
        };
        if !matches!(verdict, Verdict::Tampered { .. }) {
            summary.last_hash = Some(self.prev);
        }
        Checked {
            verdict,
            summary,
            events,
            lines: self.lines,
            bytes: self.bytes,
            watch: self.watch,
            watched: self.watched,
        }
    }
}

impl Checked {
    /// Whether the recording holds the anchor's event: line `events - 1`
    /// has its hash. The anchor must be the one the checker watched.
    pub fn runs_through(&self, anchor: &ledger::Anchor) -> bool {
        let Some(at) = anchor.events.checked_sub(1) else {
            return true;
        };
        debug_assert_eq!(self.watch, Some(at), "not the anchor watched");
        self.watch == Some(at) && self.watched.as_deref() == Some(anchor.hash.as_str())
    }

    /// [`against_anchor`], on what was read.
    pub fn against_anchor(&self, verdict: Verdict, anchor: &ledger::Anchor) -> Verdict {
        held_to_anchor(verdict, self.lines, self.runs_through(anchor), anchor)
    }
}

/// Feeds `checker` every whole line of `reader`, one at a time through
/// one buffer, so memory follows the longest line, not the recording.
/// Returns how many bytes follow the last newline: a torn last line,
/// for [`Checker::finish`] or for a caller that may leave it out.
pub fn feed(reader: impl BufRead, checker: &mut Checker) -> io::Result<u64> {
    feed_to(reader, checker, &mut ())
}

/// What a command does with a recording while [`feed_to`] checks it: it
/// prints as it goes, in the memory of one line, and says the verdict
/// once the whole was read.
pub trait Visit {
    /// Whether [`Visit::stored`] wants every byte, even past a problem
    /// (a copy as stored); otherwise the rest is only counted.
    fn copies(&self) -> bool {
        false
    }
    /// The recording's bytes as stored, in order: each whole line with
    /// its newline, whatever is wrong with it, and past a problem pieces
    /// of lines as they were read (so a huge one is never held whole).
    fn stored(&mut self, _bytes: &[u8]) {}
    /// The event of a line that is intact and chained to all before it.
    fn event(&mut self, _event: Event) {}
    /// The bytes after the last newline, a line cut short, before a
    /// problem was found (after one they went to [`Visit::stored`]).
    fn torn(&mut self, _tail: &[u8]) {}
}

/// Visits nothing: `verify` and `list` only want the verdict.
impl Visit for () {}

/// [`feed`], showing `visit` each line and event as it is checked.
pub fn feed_to(
    mut reader: impl BufRead,
    checker: &mut Checker,
    visit: &mut impl Visit,
) -> io::Result<u64> {
    let mut line = Vec::new();
    loop {
        if checker.settled() {
            return count_rest(reader, checker, visit);
        }
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(0);
        }
        let Some(whole) = line.strip_suffix(b"\n") else {
            visit.torn(&line);
            return Ok(line.len() as u64);
        };
        let event = checker.push_event(whole);
        visit.stored(&line);
        if let Some(event) = event {
            visit.event(event);
        }
    }
}

/// After a problem only the line count and a torn end still tell
/// (`finish`): counted without holding a line, however long.
fn count_rest(
    mut reader: impl BufRead,
    checker: &mut Checker,
    visit: &mut impl Visit,
) -> io::Result<u64> {
    let mut torn = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(torn);
        }
        let len = buf.len();
        if visit.copies() {
            visit.stored(buf);
        }
        for piece in buf.split_inclusive(|&b| b == b'\n') {
            torn += piece.len() as u64;
            if piece.ends_with(b"\n") {
                checker.lines += 1;
                checker.bytes += torn;
                torn = 0;
            }
        }
        reader.consume(len);
    }
}

fn tampered(line: usize, seq: Option<u64>, reason: String) -> Verdict {
    Verdict::Tampered { line, seq, reason }
}

/// Holds a recording's verdict against the host's ledger entry for it
/// (`None`: not listed). A recording the ledger has sealed must still end
/// in that seal; an unsealed one was cut short, not left by a crash.
///
/// `sound`: the ledger was read and checked against its head. Then one
/// it never listed did not come from this gateway, which lists every
/// recording before creating its file and keeps every entry but
/// removals through a compaction. Found in review: a planted recording
/// read as merely unsealed. Without a sound ledger (none, or a copy with
/// no head) nothing can say so, and the verdict stands.
pub fn against_ledger(
    verdict: Verdict,
    found: &Summary,
    listed: Option<&ledger::Entry>,
    sound: bool,
) -> Verdict {
    let Some(entry) = listed else {
        return match verdict {
            Verdict::Tampered { .. } => verdict,
            _ if sound => tampered(
                1,
                Some(0),
                "not recorded by this gateway: the host's ledger never listed it".into(),
            ),
            _ => verdict,
        };
    };
    match entry.outcome {
        // Running, or the gateway stopped (or gave up on it) and has not
        // started since: held to its anchor by `against_anchor`.
        ledger::Outcome::Opened | ledger::Outcome::Failed => return verdict,
        // Its own first bad line, if it has one, says more.
        ledger::Outcome::Damaged if matches!(verdict, Verdict::Tampered { .. }) => {
            return verdict;
        }
        ledger::Outcome::Damaged => {
            let held = if entry.events > 0 {
                let short = entry.final_hash.get(..16).unwrap_or(&entry.final_hash);
                format!(
                    "the {} events the gateway had fsynced (hash {short}…)",
                    entry.events
                )
            } else {
                "what the gateway had written".to_owned()
            };
            let n = found.events;
            return tampered(
                n as usize + 1,
                Some(n),
                format!(
                    "the host's ledger has this recording damaged (ledger seq {}): when the gateway started again it no longer held {held}, so it was not sealed",
                    entry.seq
                ),
            );
        }
        // Names no recording; never listed under one.
        ledger::Outcome::Compacted => return verdict,
        // Retention lists a removal before the unlink: a sealed
        // recording caught in between (or left by a crash there, until the
        // next start deletes it) is still what its seal says.
        ledger::Outcome::Removed
            if matches!(verdict, Verdict::Sealed { .. } | Verdict::Recovered { .. }) =>
        {
            return verdict;
        }
        ledger::Outcome::Removed => {
            return tampered(
                1,
                Some(0),
                format!(
                    "the host's ledger has this recording removed by retention (ledger seq {}), yet a file is here under its name",
                    entry.seq
                ),
            );
        }
        ledger::Outcome::Sealed | ledger::Outcome::Recovered => {}
    }
    // Checked as hex when the ledger was read; `get` keeps odd bytes from
    // panicking all the same.
    let short = entry.final_hash.get(..16).unwrap_or(&entry.final_hash);
    let sealed_hash = || found.seal.as_ref().map(|s| s.final_hash.as_str());
    match verdict {
        Verdict::Unsealed { events: n } => tampered(
            n as usize + 1,
            Some(n),
            format!(
                "the host's ledger has this session {} with {} events (final hash {short}…), but the recording ends after seq {} without a seal: it was cut short",
                entry.outcome.as_str(),
                entry.events,
                n.saturating_sub(1)
            ),
        ),
        Verdict::Sealed { events: n } | Verdict::Recovered { events: n }
            if n != entry.events || sealed_hash() != Some(entry.final_hash.as_str()) =>
        {
            tampered(
                n as usize,
                Some(n.saturating_sub(1)),
                format!(
                    "the host's ledger has this session {} with {} events (final hash {short}…), not the {n} events sealed here",
                    entry.outcome.as_str(),
                    entry.events
                ),
            )
        }
        other => other,
    }
}

/// Whether `data` holds the anchor's event: line `events - 1` has its hash.
pub fn runs_through(data: &[u8], anchor: &ledger::Anchor) -> bool {
    let Some(at) = anchor.events.checked_sub(1) else {
        return true;
    };
    data.split(|&b| b == b'\n')
        .nth(at as usize)
        .and_then(|line| chain::split(line).ok())
        .is_some_and(|(hash, _, _)| hash == anchor.hash)
}

/// Holds a recording the gateway has not sealed in the ledger (opened,
/// or failed) to its anchor: where it stood when the gateway last
/// fsynced it (from the head, or the `failed` line). Found in review: a
/// recording cut below that read as merely unsealed. A verdict that is
/// already tampered stays as it is.
pub fn against_anchor(verdict: Verdict, data: &[u8], anchor: &ledger::Anchor) -> Verdict {
    let lines = data.split(|&b| b == b'\n').count().saturating_sub(1) as u64;
    held_to_anchor(verdict, lines, runs_through(data, anchor), anchor)
}

/// [`against_anchor`] on a recording of `lines` whole lines, which does
/// or does not run through the anchor.
fn held_to_anchor(
    verdict: Verdict,
    lines: u64,
    runs_through: bool,
    anchor: &ledger::Anchor,
) -> Verdict {
    if matches!(verdict, Verdict::Tampered { .. }) || runs_through {
        return verdict;
    }
    let short = anchor.hash.get(..16).unwrap_or(&anchor.hash);
    if lines < anchor.events {
        return tampered(
            lines as usize + 1,
            Some(lines),
            format!(
                "the recording ends after {lines} events, cut below the {} events the gateway fsynced (last hash {short}…)",
                anchor.events
            ),
        );
    }
    tampered(
        anchor.events as usize,
        Some(anchor.events - 1),
        format!(
            "this is not the line the gateway fsynced as event {} (hash {short}…): the recording was rewritten",
            anchor.events
        ),
    )
}
