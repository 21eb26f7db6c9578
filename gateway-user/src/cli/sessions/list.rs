//! `sessions list`: one row per recording, filtered.

use std::{io::Write, time::SystemTime};

use super::{
    super::{escaped::Escaped, output::tell},
    judge::Judged,
    source::Source,
    verdict::state,
};
use crate::recording::{Body, verify::Verdict};

/// Prints the recordings that pass the filters; how many of the rows
/// printed say TAMPERED.
pub(super) fn list(
    source: &Source,
    since: Option<&str>,
    identity: Option<&str>,
    target: Option<&str>,
) -> Result<usize, String> {
    let cutoff = since.map(parse_since).transpose()?;
    let listed = source.all()?;
    let mut out = Escaped(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "{:<31} {:<27} {:<28} {:<14} {:<22} {:>5} STATE",
        "SESSION", "STARTED", "IDENTITY", "TARGET", "DESTINATION", "STMTS"
    );
    let mut unreadable = 0;
    let mut tampered = 0;
    for entry in &listed {
        let id = &entry.id;
        // One stray file must not hide the rest: its row says what is wrong.
        let Judged { verdict, found, .. } = match source.load_listed(entry) {
            Ok(loaded) => loaded,
            Err(e) => {
                unreadable += 1;
                let _ = writeln!(out, "{id:<31} {:<27} TAMPERED: {e}", "?");
                continue;
            }
        };
        let is_tampered = matches!(verdict, Verdict::Tampered { .. });
        let Some(first) = &found.first else {
            tampered += usize::from(is_tampered);
            let _ = writeln!(out, "{id:<31} {:<27} {}", "?", state(&verdict));
            continue;
        };
        let Body::SessionStart {
            identity: who,
            dst,
            target: session_target,
            ..
        } = &first.body
        else {
            continue;
        };
        if let Some(cutoff) = cutoff
            && humantime::parse_rfc3339(&first.wall).is_ok_and(|t| t < cutoff)
        {
            continue;
        }
        let who = format!("uid={} {}[{}]", who.uid, who.comm, who.pid);
        if identity.is_some_and(|i| !who.contains(i)) {
            continue;
        }
        let session_target = session_target.as_deref().unwrap_or("-");
        if target.is_some_and(|t| t != session_target) {
            continue;
        }
        let statements = found.statements;
        let _ = writeln!(
            out,
            "{:<31} {:<27} {:<28} {:<14} {:<22} {:>5} {}",
            first.session,
            first.wall,
            who,
            session_target,
            dst,
            statements,
            state(&verdict)
        );
        tampered += usize::from(is_tampered);
    }
    if unreadable > 0 {
        tell!(
            "warning: {unreadable} recording(s) could not be listed; `chokepoint sessions verify --all` reports them too"
        );
    }
    Ok(unreadable + tampered)
}

pub(super) fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("--since {text} reaches before 1970"));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "--since {text:?} is neither a duration (2h, 3days) nor a time (2026-11-27T10:00:00Z)"
        )
    })
}
