//! How many lines one source may log per window. Anything a job (or any
//! local process) can repeat at will, such as a refused connect, a shed
//! connection or a datagram nobody sent through the kernel, would
//! otherwise write a line per attempt, filling the disk everyone's logs and
//! recordings need; past the budget, events are counted and the count is
//! handed to the first line of the source's next window.
use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Sources remembered at most; past this, those quiet for a window are
/// forgotten (a forgotten source starts a fresh window, which is harmless).
const MAX_SOURCES: usize = 4096;

/// Per-source windows, each opened by the source's first event. Shared
/// by a listener and the tasks it spawns: the lock is taken only where a
/// line would be logged.
#[derive(Debug)]
pub(crate) struct LogWindow<K> {
    per_window: u32,
    window: Duration,
    sources: Mutex<HashMap<K, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    admitted: u32,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Log it; `unlogged` events of this source went uncounted in the log
    /// since its last logged line (its previous window's excess).
    Log { unlogged: u64 },
    /// Over the budget: count it only.
    Count,
}

impl<K: Hash + Eq + Copy> LogWindow<K> {
    pub(crate) fn new(per_window: u32, window: Duration) -> Self {
        LogWindow {
            per_window,
            window,
            sources: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn admit(&self, source: K, now: Instant) -> Admit {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, w| now.duration_since(w.started) < self.window);
        }
        let w = sources.entry(source).or_insert(Window {
            started: now,
            admitted: 0,
            suppressed: 0,
        });
        let mut unlogged = 0;
        if now.duration_since(w.started) >= self.window {
            unlogged = std::mem::take(&mut w.suppressed);
            w.started = now;
            w.admitted = 0;
        }
        if w.admitted < self.per_window {
            w.admitted += 1;
            Admit::Log { unlogged }
        } else {
            w.suppressed += 1;
            Admit::Count
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_logs_its_budget_per_window_and_hears_of_the_rest_later() {
        let window = Duration::from_secs(10);
        let log = LogWindow::new(3, window);
        let t0 = Instant::now();
        let admitted: Vec<Admit> = (0..5).map(|_| log.admit(7, t0)).collect();
        assert_eq!(
            admitted,
            [
                Admit::Log { unlogged: 0 },
                Admit::Log { unlogged: 0 },
                Admit::Log { unlogged: 0 },
                Admit::Count,
                Admit::Count
            ]
        );
        // Another source has a budget of its own.
        assert_eq!(log.admit(8, t0), Admit::Log { unlogged: 0 });
        // Still the same window, then the next one reports the two.
        assert_eq!(log.admit(7, t0 + window / 2), Admit::Count);
        assert_eq!(
            log.admit(7, t0 + window + Duration::from_millis(1)),
            Admit::Log { unlogged: 3 }
        );
        assert_eq!(log.admit(7, t0 + window * 3), Admit::Log { unlogged: 0 });
    }

    #[test]
    fn sources_are_bounded_and_quiet_ones_forgotten_first() {
        let window = Duration::from_secs(10);
        let log = LogWindow::new(1, window);
        let t0 = Instant::now();
        for source in 0..MAX_SOURCES as u64 {
            log.admit(source, t0);
        }
        // A window later every one of them is quiet: room is made.
        let later = t0 + window;
        assert_eq!(log.admit(u64::MAX, later), Admit::Log { unlogged: 0 });
        assert_eq!(log.sources.lock().unwrap().len(), 1);
        // A busy source keeps its count while others come and go.
        assert_eq!(log.admit(u64::MAX, later), Admit::Count);
    }
}
