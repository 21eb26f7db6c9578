//! At start, before the first session: seal what the previous run left
//! unsealed (it was killed, or the host lost power, mid-session) — only
//! recordings the ledger saw opened, never a file that merely appeared —
//! and put every seal the ledger does not hold yet into it.
//!
//! Afterwards a recording reads "unsealed" only while its session runs,
//! or until the gateway starts again after stopping mid-session; from
//! then on, cutting it short shows against its seal and the ledger. One
//! the ledger saw opened that cannot be sealed (cut below what was
//! fsynced, rewritten, or failed and written after) is listed `damaged`,
//! so that shows for good too.
use std::{fs, io::Write, path::Path, time::SystemTime};

use tracing::{info, warn};

use super::{
    chain,
    event::{Body, Event},
    files,
    keys::HostKey,
    ledger::{Anchor, Known, LedgerWriter, Outcome},
    verify::{self, Summary, Verdict},
};

/// Why a recovered seal was put on.
pub const REASON: &str =
    "the gateway stopped before the session ended; sealed when it started again";

/// Ends a recovered seal's reason when events after the gateway's last
/// fsync of the recording are under the seal: `verify` shows that reason.
pub const AS_FOUND: &str = "sealed as found";

/// What a recovery pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unsealed recordings the ledger saw opened, sealed now.
    pub sealed: usize,
    /// Sealed recordings the ledger did not have as sealed, now in it
    /// (a crash between a seal and its ledger line; recordings from
    /// before the ledger).
    pub listed: usize,
    /// Recordings left exactly as they are: they do not verify, or the
    /// ledger never saw them opened (a file that merely appeared).
    pub left: usize,
    /// Removals finished: files the ledger has as removed by retention
    /// (cut short between its line and the unlink), deleted now, and
    /// openings whose file was never made, now listed as removed.
    pub removed: usize,
    /// Of those, recordings the ledger saw opened that no longer hold
    /// what the gateway fsynced, or do not verify: the ledger now has
    /// them `damaged`, which `verify` reports as tampered for good.
    pub damaged: usize,
}

/// One pass over `dir`; `known` is what the ledger held at start.
pub fn recover(
    dir: &Path,
    key: &HostKey,
    ledger: &mut LedgerWriter,
    known: &Known,
) -> Result<Recovery, String> {
    let mut done = Recovery::default();
    let trusted = [key.public_hex()];
    // Anchors of recordings the ledger has as settled (a crash between
    // its line and the next head) are not needed any more.
    for id in known.anchors.keys() {
        if matches!(
            known.sessions.get(id),
            Some(Outcome::Sealed | Outcome::Recovered | Outcome::Removed | Outcome::Damaged)
        ) {
            ledger.settled(id);
        }
    }
    // The error names the path it failed at.
    let paths = files::all(dir).map_err(|e| format!("cannot list the recordings: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        // Only where the id says it belongs, once: a copy in another
        // date folder is nothing verify would ever look at.
        if files::find(dir, id).ok().as_deref() != Some(path.as_path())
            || !seen.insert(id.to_owned())
        {
            warn!(recording = %path.display(), "a recording outside the folder its id names: left as it is");
            done.left += 1;
            continue;
        }
        let opened = match known.sessions.get(id) {
            // Damaged was said at an earlier start, and stays said.
            Some(Outcome::Sealed | Outcome::Recovered | Outcome::Damaged) => continue,
            // Retention lists a removal before it unlinks the file: a
            // crash in between leaves it here. Retention decided, so it
            // goes now; whatever else is under the name is no recording
            // the gateway keeps either.
            Some(Outcome::Removed) => {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        warn!(recording = %path.display(), "a recording retention had listed as removed was still here (a removal cut short): removed");
                        done.removed += 1;
                    }
                    Err(e) => {
                        warn!(recording = %path.display(), error = %e, "cannot remove a recording retention had listed as removed");
                        done.left += 1;
                    }
                }
                continue;
            }
            // Failed: the writer gave up on it mid-session; held to its
            // anchor like one a crash left, and to end there (below).
            Some(Outcome::Opened | Outcome::Failed) => true,
            // Before the ledger existed, sealed recordings are listed;
            // after, a recording it never saw opened did not come from
            // this gateway. (A compaction's own line names no session.)
            None | Some(Outcome::Compacted) => false,
        };
        if !opened && !known.fresh {
            warn!(recording = %path.display(), "a recording the ledger never saw opened: left as it is, not sealed");
            done.left += 1;
            continue;
        }
        let anchor = known.anchors.get(id);
        // Read a line at a time: a crashed session's recording may be
        // too big to hold whole at start.
        let mut checker = verify::Checker::new(&trusted).watching(anchor);
        let torn = match files::open(&path).and_then(|file| verify::feed(file, &mut checker)) {
            Ok(torn) => torn,
            Err(e) => {
                warn!(recording = %path.display(), error = %e, "cannot read a recording to recover it");
                done.left += 1;
                continue;
            }
        };
        // The gateway died mid-write (power loss): the torn line was
        // never fsynced. It is left out of the checks below, and cut off
        // the file only if the recording is then sealed.
        let checked = checker.finish(if opened { 0 } else { torn });
        // It must still run through the last event the gateway fsynced.
        // Checked before anything else: found in review, a recording cut
        // to nothing was removed below (and listed `removed`, as
        // retention does) before its anchor was looked at, so emptying
        // one left no trace.
        if let Some(a) = anchor
            && !checked.runs_through(a)
        {
            warn!(recording = %path.display(), fsynced_events = a.events, "a recording no longer holds the events the gateway last fsynced: left as it is, not sealed");
            done.left += 1;
            damaged(ledger, key, id, anchor, &mut done);
            continue;
        }
        // The writer gave up on a failed recording and never wrote it
        // again, so it ends at its anchor: whole lines after it are not
        // the gateway's, and a seal would sign them. (After a crash they
        // may be: written, just not fsynced yet; those are sealed as
        // found, below.) Found in review.
        let fsynced = anchor.map_or(0, |a| a.events);
        let whole_lines = checked.lines;
        if known.sessions.get(id) == Some(&Outcome::Failed) && whole_lines > fsynced {
            warn!(recording = %path.display(), fsynced_events = fsynced, events = whole_lines, "a recording the gateway gave up on holds events written after that: left as it is, not sealed");
            done.left += 1;
            damaged(ledger, key, id, anchor, &mut done);
            continue;
        }
        // Opened, then the power went before anything of it reached the
        // disk: nothing was lost, and an empty file would read as
        // tampered for ever. Only with nothing fsynced (checked above),
        // so `removed` never stands for a recording that held events.
        if opened && checked.bytes == 0 && fsynced == 0 {
            match fs::remove_file(&path) {
                Ok(()) => {
                    warn!(recording = %path.display(), "a recording the gateway opened holds no whole line (power loss right after it opened): removed");
                    if ledger.append(key, Outcome::Removed, id, 0, "").is_ok() {
                        ledger.settled(id);
                    }
                }
                Err(e) => {
                    warn!(recording = %path.display(), error = %e, "cannot remove an empty recording");
                    done.left += 1;
                }
            }
            continue;
        }
        let found = &checked.summary;
        // Another session's lines under this name are not this session's.
        if found.session().is_some_and(|s| s != id) {
            warn!(recording = %path.display(), "a recording holds another session than its name says: left as it is");
            done.left += 1;
            if opened {
                damaged(ledger, key, id, anchor, &mut done);
            }
            continue;
        }
        let last_seal = || {
            found
                .seal
                .as_ref()
                .map_or_else(String::new, |s| s.final_hash.clone())
        };
        let (outcome, count, final_hash) = match checked.verdict {
            Verdict::Sealed { events: n } => {
                done.listed += 1;
                (Outcome::Sealed, n, last_seal())
            }
            Verdict::Recovered { events: n } => {
                done.listed += 1;
                (Outcome::Recovered, n, last_seal())
            }
            Verdict::Unsealed { .. } if !opened => {
                warn!(recording = %path.display(), "an unsealed recording from before the ledger: left unsealed, as nothing shows this gateway opened it");
                done.left += 1;
                continue;
            }
            Verdict::Unsealed { events: n } => {
                if torn > 0
                    && let Err(e) = fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(checked.bytes))
                {
                    warn!(recording = %path.display(), error = %e, "cannot cut a half-written line off a recording");
                    done.left += 1;
                    continue;
                }
                match seal_after_crash(&path, found, key, &reason(n, anchor, torn)) {
                    Ok(final_hash) => {
                        done.sealed += 1;
                        (Outcome::Recovered, n + 1, final_hash)
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot seal a recording the previous run left unsealed");
                        done.left += 1;
                        continue;
                    }
                }
            }
            Verdict::Tampered { line, reason, .. } => {
                warn!(recording = %path.display(), line, reason, "a recording does not verify: left as it is, not sealed");
                done.left += 1;
                if opened {
                    damaged(ledger, key, id, anchor, &mut done);
                }
                continue;
            }
        };
        // Not fatal: a full disk must not keep the gateway (and every
        // job's connection) down; the next start lists it again.
        if let Err(e) = ledger.append(key, outcome, id, count, &final_hash) {
            warn!(error = %e, "cannot list a recovered recording in the ledger");
            continue;
        }
        ledger.settled(id);
    }
    // The writer lists a recording before creating its file: a crash in
    // between leaves an opening with no file. With nothing of it ever
    // fsynced (no anchor), nothing was lost, as with an empty file above;
    // left as it is, `verify --all` would call it deleted.
    let mut unmade: Vec<&String> = known
        .sessions
        .iter()
        .filter(|(id, outcome)| {
            **outcome == Outcome::Opened
                && !seen.contains(*id)
                && known.anchors.get(*id).is_none_or(|a| a.events == 0)
                && files::find(dir, id).is_err()
        })
        .map(|(id, _)| id)
        .collect();
    unmade.sort();
    for id in unmade {
        warn!(session = %id, "a recording the gateway listed as opened has no file and nothing fsynced (a crash right after it opened): listed as removed");
        if ledger.append(key, Outcome::Removed, id, 0, "").is_ok() {
            ledger.settled(id);
            done.removed += 1;
        }
    }
    if let Err(e) = ledger.sync() {
        warn!(error = %e, "cannot fsync the ledger after recovery");
    }
    if done != Recovery::default() {
        info!(
            sealed = done.sealed,
            listed = done.listed,
            left = done.left,
            removed = done.removed,
            damaged = done.damaged,
            "recovered the recordings of the previous run"
        );
    }
    Ok(done)
}

/// Lists an opened recording that is left unsealed because it no longer
/// holds what the gateway wrote as `damaged`, with what it should have
/// held. Found in review: left with its `opened` line alone, a recording
/// cut below its anchor read "unsealed" for ever, and the anchor that
/// told otherwise was gone from the head at the next sync or compaction.
/// The anchor is settled only once the line is written: until then the
/// head keeps it, and the next start tries again.
fn damaged(
    ledger: &mut LedgerWriter,
    key: &HostKey,
    id: &str,
    anchor: Option<&Anchor>,
    done: &mut Recovery,
) {
    let (events, hash) = anchor.map_or((0, ""), |a| (a.events, a.hash.as_str()));
    match ledger.append(key, Outcome::Damaged, id, events, hash) {
        Ok(()) => {
            done.damaged += 1;
            ledger.settled(id);
        }
        Err(e) => warn!(error = %e, session = id, "cannot list a damaged recording in the ledger"),
    }
}

/// The recovered seal's reason: [`REASON`], and what of the recording
/// the gateway had not fsynced when it stopped.
fn reason(events: u64, anchor: Option<&Anchor>, torn: u64) -> String {
    let mut reason = REASON.to_owned();
    match anchor {
        Some(a) if events > a.events => reason.push_str(&format!(
            "; events from seq {} on were written after the gateway's last fsync and are {AS_FOUND}",
            a.events
        )),
        Some(_) => {}
        None => reason.push_str(&format!(
            "; no fsynced position of it was kept, so all its events are {AS_FOUND}"
        )),
    }
    if torn > 0 {
        reason.push_str(&format!(
            "; a half-written last line ({torn} bytes) was cut off"
        ));
    }
    reason
}

/// Appends a recovered seal to an intact, unsealed recording, `found`
/// on it; returns the hash it seals.
fn seal_after_crash(
    path: &Path,
    found: &Summary,
    key: &HostKey,
    reason: &str,
) -> Result<String, String> {
    let (Some(final_hash), Some(session), Some(seq)) = (
        found.last_hash.as_deref(),
        found.session(),
        found.events.checked_sub(1),
    ) else {
        return Err(format!("{}: no last line to seal", path.display()));
    };
    let seal = Event {
        seq: seq + 1,
        session: session.to_owned(),
        wall: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        // The session's clock stopped with the gateway: no later instant
        // on it is known.
        mono_us: found.last_mono_us,
        body: Body::Seal {
            final_hash: final_hash.to_owned(),
            public_key: key.public_hex(),
            signature: key.sign_recovered(session, final_hash, reason),
            recovered: Some(reason.to_owned()),
        },
    };
    let event = serde_json::to_vec(&seal).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    chain::append_line(&mut line, final_hash, &event);
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(&line)?;
            f.sync_data()
        })
        .map_err(|e| format!("cannot seal {}: {e}", path.display()))?;
    Ok(final_hash.to_owned())
}
