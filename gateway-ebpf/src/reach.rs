//! The kernel's half of default deny: a TCP connect to a destination no
//! policy rule could allow is refused here, so `connect()` itself fails
//! (EPERM) instead of succeeding against the gateway and being reset.
//!
//! The gateway writes [`REACH`] from its policy: every prefix an allow rule
//! names, with the ports it allows (a superset: rules that also depend on
//! uid, process, job claims or names are decided by the gateway after
//! accept). A refused connect is handed to the gateway through [`REFUSED`]
//! so it is logged and recorded like one the gateway refused.
//!
//! [`UDP_REACH`](crate::maps::UDP_REACH) is the same for datagrams outside
//! DNS, written from the policy's UDP targets.
use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use gateway_common::{Counter, FlowRecord, ReachPorts};

use crate::maps::{REFUSED, UDP_REFUSED, UDP_REPORTED, count};

/// Whether some rule may allow `port` on `addr` (IPv6, or IPv4 mapped),
/// by the trie `trie`.
#[inline(always)]
pub fn reachable(trie: &LpmTrie<[u8; 16], ReachPorts>, addr: [u8; 16], port: u16) -> bool {
    match trie.get(Key::new(128, addr)) {
        Some(ports) => ports.contains(port),
        None => false,
    }
}

/// Tells the gateway about a refused connect; counted when it cannot.
#[inline(always)]
pub fn report(rec: &FlowRecord) {
    count(Counter::Unreachable);
    if REFUSED.output::<FlowRecord>(rec, 0).is_err() {
        count(Counter::RefusedUnlogged);
    }
}

/// Tells the gateway about a refused datagram, the first time this socket
/// sends to this destination (refused senders tend to repeat themselves).
#[inline(always)]
pub fn report_udp(rec: &FlowRecord) {
    let tag = gateway_common::udp_tag(rec.cookie, &rec.dst_addr, rec.dst_port);
    if unsafe { UDP_REPORTED.get(&tag) }.is_some() {
        return;
    }
    let _ = UDP_REPORTED.insert(&tag, &1, 0);
    if UDP_REFUSED.output::<FlowRecord>(rec, 0).is_err() {
        count(Counter::RefusedUnlogged);
    }
}
