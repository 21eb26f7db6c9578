//! The gateway's side of the kernel's per-job record share
//! (`gateway-ebpf/src/quota.rs`): counts that came back to zero are
//! deleted, so the map holds the jobs with records now, not every cgroup
//! that ever connected (a full map stops counting new jobs).
use std::sync::Mutex;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use gateway_common::maps;

use super::{EbpfError, typed_map};

/// cgroup id → records it holds in the socket-keyed maps.
pub struct JobRecords {
    // aya's remove takes &mut self.
    map: Mutex<HashMap<MapData, u64, u64>>,
}

impl JobRecords {
    pub(crate) fn new(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            map: Mutex::new(typed_map(ebpf, maps::JOB_RECORDS)?),
        })
    }

    /// Deletes the counts at zero (or below: a give-back whose add was
    /// lost to an earlier sweep). A connect that charges one of them at
    /// the same moment loses its charge, which only gives its job room.
    /// Returns how many were deleted.
    pub fn sweep(&self) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let idle: Vec<u64> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, n)| idle_count(n))
            .map(|(cgroup, _)| cgroup)
            .collect();
        idle.iter().filter(|c| map.remove(c).is_ok()).count()
    }
}

/// Counts are added to with wrapping atomic adds, so "below zero" is the
/// upper half of `u64`.
fn idle_count(n: u64) -> bool {
    n.cast_signed() <= 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_and_negative_counts_are_idle() {
        assert!(super::idle_count(0));
        assert!(super::idle_count(u64::MAX), "one give-back too many");
        assert!(!super::idle_count(1));
        assert!(!super::idle_count(4096));
    }
}
