//! `sessions replay`: the session as the job saw it, with its timing.

use std::{io::Write, time::Duration};

use super::{super::escaped::Escaped, judge::Judged, source::Source, verdict::describe};
use crate::recording::{
    Body, Event,
    verify::{Verdict, Visit},
};

/// Slowest and fastest replay: slower would wait for ages on every pause
/// (and tiny speeds overflow a Duration), faster is the same as 0.
pub(super) const MIN_SPEED: f64 = 0.01;
pub(super) const MAX_SPEED: f64 = 1000.0;
/// Longest wait between two replayed events; a longer recorded gap (an idle
/// session, or a recording with a corrupt clock) is shown as a note.
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(10);

pub(super) fn parse_speed(text: &str) -> Result<f64, String> {
    let speed: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if speed == 0.0 || (MIN_SPEED..=MAX_SPEED).contains(&speed) {
        Ok(speed)
    } else {
        Err(format!(
            "must be 0 (no waiting) or {MIN_SPEED} to {MAX_SPEED}, not {text}"
        ))
    }
}

/// How long to wait for a recorded gap of `gap_us` at `speed`, and whether
/// that was cut to [`MAX_PAUSE`].
pub(super) fn pause(gap_us: u64, speed: f64) -> (Duration, bool) {
    if speed == 0.0 || gap_us == 0 {
        return (Duration::ZERO, false);
    }
    match Duration::try_from_secs_f64(gap_us as f64 / 1e6 / speed) {
        Ok(d) if d <= MAX_PAUSE => (d, false),
        _ => (MAX_PAUSE, true),
    }
}

/// Plays the events back as they are checked, then says the verdict on
/// the whole: a recording may be far larger than memory.
pub(super) fn replay(source: &Source, id: &str, speed: f64) -> Result<Verdict, String> {
    let mut player = Player {
        out: Escaped(std::io::stdout().lock()),
        speed,
        last_us: 0,
        prompt: "=>".to_owned(),
    };
    let Judged { verdict, found } = source.load(id, &mut player)?;
    let _ = writeln!(player.out, "-- {}", describe(&verdict, &found));
    Ok(verdict)
}

/// Where a replay is: the last event's time, and the prompt psql would
/// show (the database logged in to).
struct Player<W: Write> {
    out: Escaped<W>,
    speed: f64,
    last_us: u64,
    prompt: String,
}

impl<W: Write> Visit for Player<W> {
    fn event(&mut self, e: Event) {
        let gap_us = e.mono_us.saturating_sub(self.last_us);
        let (wait, cut) = pause(gap_us, self.speed);
        if !wait.is_zero() {
            let _ = self.out.flush();
            std::thread::sleep(wait);
        }
        if cut {
            let _ = writeln!(self.out, "-- … ({} s later)", gap_us / 1_000_000);
        }
        self.last_us = e.mono_us;
        let _ = match &e.body {
            Body::SessionStart {
                identity,
                dst,
                target,
                decision,
                ..
            } => writeln!(
                self.out,
                "-- {} {}[{}] uid={} → {dst} ({}) {decision}",
                e.wall,
                identity.comm,
                identity.pid,
                identity.uid,
                target.as_deref().unwrap_or("no target")
            ),
            Body::Login { role, database, .. } => {
                self.prompt = format!("{database}=>");
                writeln!(self.out, "-- logged in as {role} to {database}")
            }
            Body::Statement {
                text,
                decision,
                rule,
                reason,
                ..
            } => {
                let _ = writeln!(self.out, "{} {text}", self.prompt);
                if decision == "allow" {
                    Ok(())
                } else if decision == "approve" {
                    writeln!(self.out, "-- held for approval by rule {rule}: {reason}")
                } else {
                    writeln!(
                        self.out,
                        "ERROR:  chokepoint: {decision} by rule {rule}: {reason}"
                    )
                }
            }
            Body::Result {
                text,
                rows,
                error,
                columns,
                sample,
                ..
            } => {
                if let Some(t) = text {
                    let _ = writeln!(self.out, "=> (execute) {t}");
                }
                print_result(
                    &mut self.out,
                    columns,
                    &sample.rows(),
                    *rows,
                    error.as_deref(),
                )
            }
            Body::Approval {
                id,
                event,
                by,
                detail,
            } => writeln!(
                self.out,
                "-- approval {id} {event}{}: {detail}",
                by.as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default()
            ),
            Body::Dns {
                name,
                qtype,
                answer,
                addresses,
                ..
            } => writeln!(
                self.out,
                "-- dns {name} {qtype} → {answer} {}",
                addresses.join(", ")
            ),
            Body::SessionEnd { .. } => writeln!(self.out, "-- session ended"),
            Body::Seal { .. } => Ok(()),
        };
    }
}

pub(super) fn print_result(
    out: &mut impl Write,
    columns: &[String],
    sample: &[Vec<Option<String>>],
    rows: u64,
    error: Option<&str>,
) -> std::io::Result<()> {
    if let Some(e) = error {
        return writeln!(out, "ERROR:  {e}");
    }
    if !columns.is_empty() {
        let cells = |row: &[Option<String>]| -> Vec<String> {
            row.iter()
                .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
                .collect()
        };
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for row in sample {
            for (i, v) in cells(row).iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(v.chars().count());
                }
            }
        }
        let line = |values: &[String]| -> String {
            values
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!(" {v:<w$} "))
                .collect::<Vec<_>>()
                .join("|")
        };
        writeln!(out, "{}", line(columns))?;
        writeln!(
            out,
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        )?;
        for row in sample {
            writeln!(out, "{}", line(&cells(row)))?;
        }
        if (sample.len() as u64) < rows {
            writeln!(
                out,
                "… {} more rows not recorded",
                rows - sample.len() as u64
            )?;
        }
    }
    writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{MAX_PAUSE, parse_speed, pause};

    #[test]
    fn speeds_too_small_or_large_to_wait_by_are_refused() {
        for bad in [
            "1e-300", "5e-324", "1e-7", "0.001", "-1", "1e9", "inf", "NaN", "fast",
        ] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
        for (text, speed) in [
            ("0", 0.0),
            ("0.01", 0.01),
            ("1", 1.0),
            ("4", 4.0),
            ("1000", 1000.0),
        ] {
            assert_eq!(parse_speed(text), Ok(speed));
        }
    }

    #[test]
    fn long_gaps_wait_at_most_the_cap() {
        assert_eq!(pause(2_000_000, 4.0), (Duration::from_millis(500), false));
        assert_eq!(pause(u64::MAX, 0.01), (MAX_PAUSE, true));
        assert_eq!(pause(3_600_000_000, 1.0), (MAX_PAUSE, true));
        assert_eq!(pause(u64::MAX, 0.0), (Duration::ZERO, false));
    }
}
