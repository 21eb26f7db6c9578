//! Verdicts in words: a recording's, and the host ledger's.

use std::io::Write;

use super::{super::escaped::Escaped, source::Source};
use crate::recording::{
    ledger::Problem,
    recover,
    verify::{Summary, Verdict},
};

/// Prints the ledger's problem on stderr when a head says there must be
/// a sound ledger; whether it did (the command then exits 1).
pub(super) fn ledger_tampered(source: &Source) -> bool {
    ledger_tampered_to(source, std::io::stderr().lock())
}

/// [`ledger_tampered`], onto `err`. Escaped: found in review, the
/// problem's reason can quote the ledger file.
pub(super) fn ledger_tampered_to(source: &Source, err: impl Write) -> bool {
    let Some(p) = source.ledger_problem() else {
        return false;
    };
    let _ = writeln!(Escaped(err), "{}", describe_ledger(p));
    true
}

pub(super) fn describe_ledger(p: &Problem) -> String {
    format!(
        "ledger: TAMPERED at line {} (seq {}): {}; entries after it are not trusted",
        p.line, p.seq, p.reason
    )
}

pub(super) fn state(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Sealed { .. } => "sealed".into(),
        Verdict::Recovered { .. } => "recovered".into(),
        Verdict::Unsealed { .. } => "unsealed".into(),
        Verdict::Tampered { line, .. } => format!("TAMPERED@{line}"),
    }
}

/// The verdict in words; `found`, what it was reached on. A seal
/// names the key that made it: with a fleet's keys trusted, any of them
/// verifies, and which host sealed a session is for the reader to hold
/// against the host it claims (found in review).
pub(super) fn describe(verdict: &Verdict, found: &Summary) -> String {
    let by = sealer(found)
        .map(|key| format!(" by key {}…", key.get(..16).unwrap_or(key)))
        .unwrap_or_default();
    match verdict {
        Verdict::Sealed { events: n } => format!("verified: {n} events, sealed{by}"),
        Verdict::Recovered { events: n } => format!(
            "verified: {n} events, sealed when the gateway started again (it stopped before the session ended){}{}",
            as_found(found)
                .map(|why| format!("; {why}"))
                .unwrap_or_default(),
            if by.is_empty() {
                String::new()
            } else {
                format!(";{by}")
            }
        ),
        Verdict::Unsealed { events } => format!(
            "unsealed: the chain is intact through seq {}, but the gateway stopped before the session ended",
            events.saturating_sub(1)
        ),
        Verdict::Tampered { line, seq, reason } => format!(
            "TAMPERED at line {line}{}: {reason}",
            seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
        ),
    }
}

/// The public key (hex) of the seal that ends the events found, if one does.
pub(super) fn sealer(found: &Summary) -> Option<&str> {
    found.seal.as_ref().map(|s| s.public_key.as_str())
}

/// What a recovered seal says of events it signed that the gateway had
/// not fsynced (so nothing but the seal vouches that the gateway wrote
/// them), when it says so: the part of its reason after [`recover::REASON`].
pub(super) fn as_found(found: &Summary) -> Option<&str> {
    let why = found.seal.as_ref()?.recovered.as_deref()?;
    if !why.contains(recover::AS_FOUND) {
        return None;
    }
    let rest = why.strip_prefix(recover::REASON).unwrap_or(why);
    Some(rest.trim_start_matches("; "))
}
