//! How many UDP queries the forwarder works on at once, per listener and per job (cgroup): each costs a recording and an upstream connection, so one job's flood must not take them from the others.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

/// Queries one listener answers at once.
pub const MAX_IN_FLIGHT: usize = 512;
/// Queries of one job (cgroup) answered at once, on one listener: well
/// below [`MAX_IN_FLIGHT`], so a few busy jobs still leave room.
pub const MAX_IN_FLIGHT_PER_JOB: usize = 64;

/// One listener's count of the queries being answered.
#[derive(Debug)]
pub struct InFlight {
    total: usize,
    per_job: usize,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_job: HashMap<u64, usize>,
}

/// Why a query was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Listener,
    Job,
}

impl Full {
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Listener => "listener",
            Full::Job => "job",
        }
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new(MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_JOB)
    }
}

impl InFlight {
    pub fn new(total: usize, per_job: usize) -> Self {
        Self {
            total,
            per_job,
            counts: Arc::default(),
        }
    }

    /// A place for one query of the job in cgroup `job`, held until the
    /// [`Slot`] drops; `Err` when the listener or the job is at its bound.
    pub fn try_take(&self, job: u64) -> Result<Slot, Full> {
        let mut counts = lock(&self.counts);
        if counts.total >= self.total {
            return Err(Full::Listener);
        }
        let mine = counts.by_job.entry(job).or_default();
        if *mine >= self.per_job {
            return Err(Full::Job);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Slot {
            job,
            counts: self.counts.clone(),
        })
    }
}

/// One query's place; given back on drop (also when its task panics).
#[derive(Debug)]
pub struct Slot {
    job: u64,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_job.get_mut(&self.job) {
            *n = n.saturating_sub(1);
            // No entry for a job with nothing in flight: the map stays as
            // small as the set of jobs asking right now.
            if *n == 0 {
                counts.by_job.remove(&self.job);
            }
        }
    }
}

fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_cannot_take_the_places_of_the_others() {
        let limits = InFlight::new(5, 2);
        let a1 = limits.try_take(1).expect("first of job 1");
        let _a2 = limits.try_take(1).expect("second of job 1");
        assert_eq!(limits.try_take(1).unwrap_err(), Full::Job);
        // Job 1 at its bound leaves room for others.
        let _b1 = limits.try_take(2).expect("job 2");
        let _b2 = limits.try_take(2).expect("job 2");
        let _c1 = limits.try_take(3).expect("job 3");
        assert_eq!(limits.try_take(4).unwrap_err(), Full::Listener);
        // An answered query gives its place back.
        drop(a1);
        let _a3 = limits.try_take(1).expect("job 1 again");
        assert_eq!(limits.try_take(4).unwrap_err(), Full::Listener);
    }

    #[test]
    fn a_job_with_nothing_in_flight_leaves_no_entry() {
        let limits = InFlight::default();
        let slots: Vec<Slot> = (0..MAX_IN_FLIGHT_PER_JOB)
            .map(|_| limits.try_take(9).expect("within the bound"))
            .collect();
        assert_eq!(limits.try_take(9).unwrap_err(), Full::Job);
        drop(slots);
        let counts = lock(&limits.counts);
        assert_eq!(counts.total, 0);
        assert!(counts.by_job.is_empty());
    }
}
