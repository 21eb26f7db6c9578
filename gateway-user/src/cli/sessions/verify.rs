//! `sessions verify`: chains, seals and the host's ledger, one recording
//! or all of them.

use std::{io::Write, process::ExitCode, time::Duration};

use super::{
    super::escaped::Escaped,
    TAMPERED, TROUBLE, UNSEALED,
    judge::Judged,
    settings::denied,
    source::{Listed, Source, Store},
    trouble,
    verdict::{describe, describe_ledger},
};
use crate::recording::{files, ledger::Outcome, verify::Verdict};

/// How long `verify --all` gives a session the ledger has opened to have
/// its file made, before calling it gone: the writer makes it right after
/// listing it, so this is ample, and it is waited only when one is missing.
pub(super) const OPENING: Duration = Duration::from_millis(200);

pub(super) fn verify_cmd(source: &Source, id: Option<&str>, all: bool) -> ExitCode {
    // Session ids, file names and reasons come from files anyone with
    // write access to the folder could have forged.
    let mut out = Escaped(std::io::stdout().lock());
    let mut listed = if all {
        match source.all() {
            Ok(listed) => listed,
            Err(e) => return trouble(e),
        }
    } else {
        vec![Listed {
            id: id.unwrap_or_default().to_owned(),
            path: None,
        }]
    };
    // Neither a recording nor the ledger every gateway makes at its first
    // start: not a recordings directory (a mistyped --dir passed as
    // "all intact", found in review).
    if all
        && listed.is_empty()
        && source.ledger.is_none()
        && !source.headed
        && let Store::Files(dir) = &source.store
    {
        return trouble(format!(
            "{} holds no recordings and no ledger: name the recordings directory with --dir, or [recording] dir",
            dir.display()
        ));
    }
    let (mut tampered, mut unsealed, mut unreadable) = (0, 0, 0);
    if all && let Some(ledger) = &source.ledger {
        if let Some(p) = &ledger.problem {
            tampered += 1;
            let _ = writeln!(out, "{}", describe_ledger(p));
        }
        // What the ledger has sealed must still be there, unless
        // retention removed it (the ledger says so too).
        let present: std::collections::HashSet<&str> =
            listed.iter().map(|l| l.id.as_str()).collect();
        let mut missing: Vec<_> = ledger
            .entries
            .values()
            .filter(|e| e.outcome != Outcome::Removed && !present.contains(e.session.as_str()))
            .collect();
        missing.sort_by(|a, b| a.session.cmp(&b.session));
        // The writer lists a recording before it creates the file: a
        // session opening meanwhile has none yet. Looked for once more.
        if missing.iter().any(|e| e.outcome == Outcome::Opened) {
            wait_for_openings();
            let now = source.ledger_now();
            missing.retain(|e| {
                if e.outcome != Outcome::Opened {
                    return true;
                }
                if let Some(path) = source.file_of(&e.session) {
                    listed.push(Listed {
                        id: e.session.clone(),
                        path: Some(path),
                    });
                    return false;
                }
                // Its file could not be made: the writer listed it removed.
                now.as_ref()
                    .and_then(|l| l.entries.get(&e.session))
                    .is_none_or(|e| e.outcome != Outcome::Removed)
            });
        }
        for e in missing {
            tampered += 1;
            let _ = writeln!(
                out,
                "{}: TAMPERED: the host's ledger has it {} with {} events (ledger seq {}), but the recording is gone",
                e.session,
                e.outcome.as_str(),
                e.events,
                e.seq
            );
        }
    }
    if !all && let Some(p) = source.ledger_problem() {
        tampered += 1;
        let _ = writeln!(out, "{}", describe_ledger(p));
    } else if !all && let Some(p) = source.ledger.as_ref().and_then(|l| l.problem.as_ref()) {
        // No head vouches for it (a copy on another machine): nothing
        // says this ledger is the host's.
        let _ = writeln!(
            Escaped(std::io::stderr().lock()),
            "warning: the ledger is TAMPERED at line {} (seq {}): {}; run `chokepoint sessions verify --all`",
            p.line,
            p.seq,
            p.reason
        );
    }
    for entry in &listed {
        let id = &entry.id;
        match source.load_listed(entry) {
            Ok(Judged { verdict, found, .. }) => {
                match verdict {
                    Verdict::Sealed { .. } | Verdict::Recovered { .. } => {}
                    Verdict::Unsealed { .. } => unsealed += 1,
                    Verdict::Tampered { .. } => tampered += 1,
                }
                let _ = writeln!(out, "{id}: {}", describe(&verdict, &found));
            }
            // A file this user may not read: no verdict, and no evidence
            // either (exit 2, unless another recording is tampered).
            Err(e) if all && entry.path.as_deref().is_some_and(denied) => {
                unreadable += 1;
                let _ = writeln!(
                    out,
                    "{id}: not verified: {e}: run as root, or as the gateway's user"
                );
            }
            // One unreadable or misplaced file must not hide the verdicts
            // of the rest; it counts as tampered.
            Err(e) if all => {
                tampered += 1;
                let _ = writeln!(out, "{id}: TAMPERED: cannot be verified: {e}");
            }
            // Not found is a bad argument, unless the ledger vouches that
            // the recording existed.
            Err(e) => match vouched(source, id, &e) {
                Some(line) => {
                    tampered += 1;
                    let _ = writeln!(out, "{line}");
                }
                None => return trouble(e),
            },
        }
    }
    if tampered > 0 {
        ExitCode::from(TAMPERED)
    } else if unreadable > 0 {
        ExitCode::from(TROUBLE)
    } else if unsealed > 0 {
        ExitCode::from(UNSEALED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Gives sessions just listed [`OPENING`] to have their files made; a
/// test makes one meanwhile instead, so it need not race the wait.
pub(super) fn wait_for_openings() {
    #[cfg(test)]
    if let Some(make) = super::exit_tests::WHILE_WAITING.take() {
        make();
        return;
    }
    std::thread::sleep(OPENING);
}

/// The verdict on recording `id`, which could not be loaded (`error`),
/// when the host's ledger has it (opened or sealed, not removed by
/// retention): it was deleted or made unreadable, so it is tampered.
pub(super) fn vouched(source: &Source, id: &str, error: &str) -> Option<String> {
    // A ledger that is not sound cannot say the recording never existed.
    if let Some(p) = source.ledger_problem()
        && files::is_id(id)
        && source
            .ledger
            .as_ref()
            .is_none_or(|l| !l.entries.contains_key(id))
    {
        return Some(format!(
            "{id}: TAMPERED: {error}; the host's ledger, which would say whether the gateway recorded it, is TAMPERED at line {} (seq {})",
            p.line, p.seq
        ));
    }
    let known = source.ledger.as_ref()?.entries.get(id)?;
    if known.outcome == Outcome::Removed {
        return None;
    }
    let gone = match &source.store {
        Store::Files(dir) => files::find(dir, id).is_err(),
        Store::Database(_) => false,
    };
    let why = if gone {
        "the recording is gone".to_owned()
    } else {
        format!("it cannot be verified: {error}")
    };
    Some(format!(
        "{id}: TAMPERED: the host's ledger has it {} with {} events (ledger seq {}), but {why}",
        known.outcome.as_str(),
        known.events,
        known.seq
    ))
}
