//! How many connections each job has open through the gateway, so that one
//! job's flood is refused before it takes the descriptors, memory and
//! recording files every other job on the host needs.
//!
//! A job is its cgroup: the kernel names it in every flow record, and a job
//! cannot move its processes out of it (that takes write access to the
//! cgroup tree, which the threat model denies jobs).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicUsize},
};

use crate::job_budget::JobBudget;

/// Open connections per cgroup id, and the bytes of partly received
/// messages they hold ([`JobBudget`]); a cgroup with none has no entry, so
/// the table is as large as the number of jobs with connections right now.
#[derive(Debug, Default, Clone)]
pub(crate) struct JobConnections {
    open: Arc<Mutex<HashMap<u64, Job>>>,
}

#[derive(Debug)]
struct Job {
    connections: u32,
    buffered: Arc<AtomicUsize>,
}

type Table = Mutex<HashMap<u64, Job>>;

/// One open connection of a job; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    open: Arc<Table>,
    cgroup_id: u64,
    buffered: Arc<AtomicUsize>,
}

/// A job already at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AtLimit {
    pub open: u32,
}

impl JobConnections {
    /// A place for one more connection of `cgroup_id`, unless it has
    /// `limit` open already.
    pub(crate) fn take(&self, cgroup_id: u64, limit: u32) -> Result<Slot, AtLimit> {
        let mut open = lock(&self.open);
        let job = open.entry(cgroup_id).or_insert_with(|| Job {
            connections: 0,
            buffered: Arc::default(),
        });
        let n = job.connections;
        if n >= limit {
            // A limit of 0 must not leave the entry it just made.
            if n == 0 {
                open.remove(&cgroup_id);
            }
            return Err(AtLimit { open: n });
        }
        job.connections += 1;
        let buffered = job.buffered.clone();
        Ok(Slot {
            open: self.open.clone(),
            cgroup_id,
            buffered,
        })
    }

    /// Connections `cgroup_id` has open now.
    #[cfg(test)]
    pub(crate) fn open(&self, cgroup_id: u64) -> u32 {
        lock(&self.open)
            .get(&cgroup_id)
            .map_or(0, |j| j.connections)
    }

    /// Jobs with at least one connection open.
    #[cfg(test)]
    fn jobs(&self) -> usize {
        lock(&self.open).len()
    }
}

impl Slot {
    /// The job's budget for partly received messages, `limit` bytes
    /// across all its connections.
    pub(crate) fn budget(&self, limit: usize) -> JobBudget {
        JobBudget::new(self.buffered.clone(), limit)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(job) = open.get_mut(&self.cgroup_id) {
            job.connections = job.connections.saturating_sub(1);
            if job.connections == 0 {
                open.remove(&self.cgroup_id);
            }
        }
    }
}

/// The counts stay right even if a holder panicked: each update is one
/// step, never left half done.
fn lock(open: &Table) -> std::sync::MutexGuard<'_, HashMap<u64, Job>> {
    open.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_at_its_limit_is_refused_until_one_of_its_connections_ends() {
        let table = JobConnections::default();
        let a = table.take(7, 2).unwrap();
        let _b = table.take(7, 2).unwrap();
        assert_eq!(table.take(7, 2).unwrap_err(), AtLimit { open: 2 });
        // Another job is not held to the first one's count.
        let other = table.take(8, 2).unwrap();
        assert_eq!((table.open(7), table.open(8)), (2, 1));
        drop(a);
        let _c = table.take(7, 2).unwrap();
        assert_eq!(table.open(7), 2);
        drop(other);
        assert_eq!(table.jobs(), 1, "a job with no connection leaves no entry");
    }

    #[test]
    fn a_lowered_limit_refuses_new_connections_and_keeps_open_ones() {
        let table = JobConnections::default();
        let slots: Vec<_> = (0..3).map(|_| table.take(1, 3).unwrap()).collect();
        assert!(table.take(1, 2).is_err());
        drop(slots);
        assert_eq!(table.jobs(), 0);
        assert!(table.take(1, 2).is_ok());
    }
}
