//! Bytes one job's connections may make the gateway hold at once in
//! messages it has only partly received.
//!
//! A PostgreSQL message may be as large as the target's
//! `max_message_bytes` (16 MiB by default), and the gateway must hold all
//! of it before it can decide on it. A job opening its full share of
//! connections and sending most of such a message on each (or making the
//! server send one back) would otherwise make the gateway hold gigabytes,
//! and its memory is every job's data path. Each job's connections share
//! one budget (`[daemon] max_buffered_mb_per_job`); a message that does
//! not fit ends its session with an error that names the setting.
//!
//! ```
//! use chokepoint::job_budget::JobBudget;
//! let budget = JobBudget::new(std::sync::Arc::default(), 1 << 20);
//! let held = budget.take(600 << 10).unwrap();
//! assert!(budget.take(600 << 10).is_err(), "both would not fit");
//! drop(held);
//! assert!(budget.take(600 << 10).is_ok());
//! ```
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// One job's budget, shared by its connections.
#[derive(Debug, Clone)]
pub struct JobBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

/// Bytes taken from a budget; given back when dropped.
#[derive(Debug)]
pub struct Held {
    bytes: usize,
    used: Arc<AtomicUsize>,
}

/// The budget was spent: what the job's connections held already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub used: usize,
    pub limit: usize,
}

impl JobBudget {
    /// `used` is the job's counter, shared by all its connections.
    pub fn new(used: Arc<AtomicUsize>, limit: usize) -> Self {
        JobBudget { used, limit }
    }

    /// A budget no message exceeds (tests, and connections of no job).
    pub fn unlimited() -> Self {
        JobBudget::new(Arc::default(), usize::MAX)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `bytes`, or says how much the job holds already.
    pub fn take(&self, bytes: usize) -> Result<Held, Spent> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_add(bytes);
            if next > self.limit {
                return Err(Spent {
                    used,
                    limit: self.limit,
                });
            }
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Held {
                        bytes,
                        used: self.used.clone(),
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_connections_share_one_budget() {
        let used = Arc::new(AtomicUsize::new(0));
        let (a, b) = (
            JobBudget::new(used.clone(), 100),
            JobBudget::new(used.clone(), 100),
        );
        let held = a.take(60).unwrap();
        assert_eq!(
            b.take(50).unwrap_err(),
            Spent {
                used: 60,
                limit: 100
            }
        );
        let more = b.take(40).unwrap();
        drop(held);
        assert_eq!(used.load(Ordering::Relaxed), 40);
        drop(more);
        assert_eq!(used.load(Ordering::Relaxed), 0);
        assert!(JobBudget::unlimited().take(usize::MAX).is_ok());
    }
}
