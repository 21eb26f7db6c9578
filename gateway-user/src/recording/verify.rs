//! Checking a recording: every line's hash, the links between lines, the
//! sequence numbers and the seal. The first problem is reported with its
//! line and `seq`, and a chain that is intact but has no seal (the gateway
//! stopped before the session ended) is told apart from a tampered one.
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
    let mut events: Vec<Event> = Vec::new();
    let mut prev = chain::GENESIS.to_owned();
    let mut sealed = false;
    let mut recovered_seal = false;
    let body = match data.strip_suffix(b"\n") {
        Some(body) => body,
        None if data.is_empty() => {
            return (tampered(1, None, "the recording is empty".into()), events);
        }
        None => {
            let line = data.split(|&b| b == b'\n').count();
            return (
                tampered(
                    line,
                    None,
                    format!("the file ends inside line {line}: it was truncated"),
                ),
                events,
            );
        }
    };
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let expected_seq = i as u64;
        if sealed {
            return (
                tampered(n, Some(expected_seq), "a line follows the seal".into()),
                events,
            );
        }
        let (hash, prev_hash, event) = match chain::split(line) {
            Ok(parts) => parts,
            Err(why) => return (tampered(n, Some(expected_seq), why.into()), events),
        };
        if prev_hash != prev {
            return (
                tampered(
                    n,
                    Some(expected_seq),
                    "prev_hash does not match the line before: a line was removed, inserted or moved".into(),
                ),
                events,
            );
        }
        if chain::hash(&prev, event) != hash {
            return (
                tampered(
                    n,
                    Some(expected_seq),
                    "the hash does not match the event: the line was changed".into(),
                ),
                events,
            );
        }
        let parsed: Event = match serde_json::from_slice(event) {
            Ok(e) => e,
            Err(e) => {
                return (
                    tampered(
                        n,
                        Some(expected_seq),
                        format!("the event is not valid: {e}"),
                    ),
                    events,
                );
            }
        };
        if parsed.seq != expected_seq {
            return (
                tampered(
                    n,
                    Some(expected_seq),
                    format!("seq is {} where {expected_seq} belongs", parsed.seq),
                ),
                events,
            );
        }
        if let Some(first) = events.first()
            && first.session != parsed.session
        {
            return (
                tampered(
                    n,
                    Some(expected_seq),
                    format!("the event belongs to session {}", parsed.session),
                ),
                events,
            );
        }
        if i == 0 && !matches!(parsed.body, Body::SessionStart { .. }) {
            return (
                tampered(
                    n,
                    Some(0),
                    "the first event is not the session start".into(),
                ),
                events,
            );
        }
        if let Body::Seal {
            final_hash,
            public_key: sealer,
            signature,
            recovered,
        } = &parsed.body
        {
            if *final_hash != prev {
                return (
                    tampered(
                        n,
                        Some(expected_seq),
                        "the seal does not name the hash of the event before it".into(),
                    ),
                    events,
                );
            }
            if !trusted.contains(sealer) {
                return (
                    tampered(
                        n,
                        Some(expected_seq),
                        format!(
                            "the seal names key {sealer}, which is not trusted here (trusted: {})",
                            trusted.join(", ")
                        ),
                    ),
                    events,
                );
            }
            if !keys::verify(
                sealer,
                &parsed.session,
                final_hash,
                recovered.as_deref(),
                signature,
            ) {
                return (
                    tampered(
                        n,
                        Some(expected_seq),
                        "the seal's signature does not verify".into(),
                    ),
                    events,
                );
            }
            sealed = true;
            recovered_seal = recovered.is_some();
        }
        prev = hash.to_owned();
        events.push(parsed);
    }
    let count = events.len() as u64;
    let verdict = if recovered_seal {
        Verdict::Recovered { events: count }
    } else if sealed {
        Verdict::Sealed { events: count }
    } else {
        Verdict::Unsealed { events: count }
    };
    (verdict, events)
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
    events: &[Event],
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
            let n = events.len();
            return tampered(
                n + 1,
                Some(n as u64),
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
    let sealed_hash = || match events.last().map(|e| &e.body) {
        Some(Body::Seal { final_hash, .. }) => Some(final_hash.as_str()),
        _ => None,
    };
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
    if matches!(verdict, Verdict::Tampered { .. }) || runs_through(data, anchor) {
        return verdict;
    }
    let short = anchor.hash.get(..16).unwrap_or(&anchor.hash);
    let lines = data.split(|&b| b == b'\n').count().saturating_sub(1) as u64;
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
