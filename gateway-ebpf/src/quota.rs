//! Each job's share of the socket-keyed record maps ([`PENDING`],
//! [`DNS_PENDING`], [`UDP_PENDING`]).
//!
//! Those maps are shared by every job on the host, and a record lives as
//! long as its socket can still send: a TCP connect whose SYN is deferred
//! (`TCP_FASTOPEN_CONNECT`) or a UDP socket that sent once keeps its record
//! until it is closed. Without a share, one job holding
//! [`FLOW_MAP_CAPACITY`] such sockets would leave no room for anyone
//! else's, and every other job's connects and lookups would be refused.
//! A job (the cgroup the kernel names in the record) may hold
//! [`RECORDS_PER_JOB`]; past that its own connects and sends fail with
//! `EPERM`, counted as `job_quota`. A TCP socket is charged from its
//! connect until it is released, so the share also bounds the job's open
//! TCP connections (far above `max_connections_per_job`'s default).
//!
//! Counts are charged to the record's cgroup and given back when the
//! socket is released (a TCP socket's charge moves with its record to
//! [`FLOWS`] at the SYN and stays until then: see [`crate::egress`]). The
//! gateway
//! deletes counts that came back to zero (`JobRecords::sweep`), so the map
//! holds the jobs with records now, not every cgroup that ever connected.
//! Counts are approximate under races (two CPUs may both pass the check at
//! the limit; an add that lands on an entry the sweep just deleted is
//! lost), and a count below zero only gives that job more room: the share
//! bounds a flood, it does not decide anyone's access.
//!
//! [`PENDING`]: crate::maps::PENDING
//! [`DNS_PENDING`]: crate::maps::DNS_PENDING
//! [`UDP_PENDING`]: crate::maps::UDP_PENDING
//! [`FLOWS`]: crate::maps::FLOWS
//! [`FLOW_MAP_CAPACITY`]: gateway_common::FLOW_MAP_CAPACITY
use aya_ebpf::bindings::BPF_NOEXIST;
use gateway_common::RECORDS_PER_JOB;

use crate::maps::JOB_RECORDS;

/// Charges one record to `cgroup_id`; false when the job holds its share
/// already.
#[inline(always)]
pub fn take(cgroup_id: u64) -> bool {
    let Some(n) = counter(cgroup_id) else {
        // The count cannot be kept (no memory for the entry): the share is
        // a bound on floods, not a verdict, so the record is let in.
        return true;
    };
    // SAFETY: a map value, 8-byte aligned; every writer adds atomically.
    // Signed: a count gone below zero is room, never a refusal.
    if unsafe { core::ptr::read_volatile(n) } as i64 >= i64::from(RECORDS_PER_JOB) {
        return false;
    }
    add(n, 1);
    true
}

/// Gives back one record charged to `cgroup_id`.
#[inline(always)]
pub fn give_back(cgroup_id: u64) {
    if let Some(n) = JOB_RECORDS.get_ptr_mut(&cgroup_id) {
        // Wrapping add of -1: the BPF instruction set has atomic add only.
        add(n, u64::MAX);
    }
}

/// An atomic add whose result is unused: the one atomic every BPF CPU
/// version has (`lock xadd`). `AtomicU64::fetch_add` is not offered for
/// this target (no compare-and-swap), and the compiler intrinsic behind it
/// changes its signature between nightlies; the instruction does not.
#[inline(always)]
fn add(n: *mut u64, by: u64) {
    // SAFETY: `n` is a map value, 8-byte aligned, live for the program run;
    // the instruction touches those 8 bytes only.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) n,
            in(reg) by,
            options(nostack),
        );
    }
}

#[inline(always)]
fn counter(cgroup_id: u64) -> Option<*mut u64> {
    if let Some(n) = JOB_RECORDS.get_ptr_mut(&cgroup_id) {
        return Some(n);
    }
    // NOEXIST: another CPU may have made it meanwhile; keep theirs.
    let _ = JOB_RECORDS.insert(&cgroup_id, &0, u64::from(BPF_NOEXIST));
    JOB_RECORDS.get_ptr_mut(&cgroup_id)
}
