//! `sessions show`: every event of a recording as a table.

use std::io::Write;

use super::{super::escaped::Escaped, judge::Judged, source::Source, verdict::describe};
use crate::recording::{
    Body, Event,
    verify::{Verdict, Visit},
};

/// Prints each event as it is checked, then the verdict on the whole:
/// a recording may be far larger than memory. Events after a problem are
/// not shown; those before one are, then the verdict that says TAMPERED.
pub(super) fn show(source: &Source, id: &str) -> Result<Verdict, String> {
    let mut table = Table {
        out: Escaped(std::io::stdout().lock()),
        headed: false,
    };
    let Judged { verdict, found } = source.load(id, &mut table)?;
    table.head();
    let _ = writeln!(table.out, "-- {}", describe(&verdict, &found));
    Ok(verdict)
}

/// The events as rows, under a header printed with the first (nothing is
/// printed for a recording that cannot be read at all).
struct Table<W: Write> {
    out: Escaped<W>,
    headed: bool,
}

impl<W: Write> Table<W> {
    fn head(&mut self) {
        if !std::mem::replace(&mut self.headed, true) {
            let _ = writeln!(
                self.out,
                "{:>4} {:>12} {:<14} DETAILS",
                "SEQ", "+MS", "TYPE"
            );
        }
    }
}

impl<W: Write> Visit for Table<W> {
    fn event(&mut self, e: Event) {
        self.head();
        let _ = writeln!(
            self.out,
            "{:>4} {:>12.3} {:<14} {}",
            e.seq,
            e.mono_us as f64 / 1000.0,
            e.body.kind(),
            details(&e.body)
        );
    }
}

pub(super) fn details(body: &Body) -> String {
    match body {
        Body::SessionStart {
            identity,
            dst,
            protocol,
            target,
            decision,
            rule,
            mode,
        } => format!(
            "uid={} gid={} pid={} comm={} cgroup={} dst={dst} protocol={protocol} target={} decision={decision} rule={rule} mode={mode}",
            identity.uid,
            identity.gid,
            identity.pid,
            identity.comm,
            identity.cgroup_id,
            target.as_deref().unwrap_or("-")
        ),
        Body::Login {
            role,
            database,
            upstream,
        } => format!("role={role} database={database} upstream={upstream}"),
        Body::Statement {
            text,
            class,
            decision,
            rule,
            reason,
        } => {
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            };
            format!("{decision} by {rule} [{class}]{why}: {text}")
        }
        Body::Result {
            text,
            rows,
            duration_us,
            error,
            masked,
            ..
        } => {
            let mut s = format!("rows={rows} {:.3} ms", *duration_us as f64 / 1000.0);
            if *masked {
                s.push_str(" masked");
            }
            if let Some(e) = error {
                s.push_str(&format!(" error={e}"));
            }
            if let Some(t) = text {
                s.push_str(&format!(": {t}"));
            }
            s
        }
        Body::SessionEnd {
            bytes_up,
            bytes_down,
            statements,
            denied,
            error,
        } => format!(
            "up={bytes_up}B down={bytes_down}B statements={statements} denied={denied}{}",
            error
                .as_deref()
                .map(|e| format!(" error={e}"))
                .unwrap_or_default()
        ),
        Body::Approval {
            id,
            event,
            by,
            detail,
        } => format!(
            "{id} {event}{}: {detail}",
            by.as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default()
        ),
        Body::Dns {
            name,
            qtype,
            decision,
            rule,
            answer,
            addresses,
        } => format!(
            "{decision} by {rule}: {name} {qtype} → {answer}{}",
            if addresses.is_empty() {
                String::new()
            } else {
                format!(" [{}]", addresses.join(", "))
            }
        ),
        Body::Seal {
            final_hash,
            recovered: None,
            ..
        } => format!("final hash {final_hash}"),
        Body::Seal {
            final_hash,
            recovered: Some(why),
            ..
        } => format!("final hash {final_hash} ({why})"),
    }
}
