//! Maps shared by the programs. Pinned by name so that a restarted gateway
//! adopts the same maps the still-attached programs use.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use gateway_common::{
    COUNTER_SLOTS, ClientKey, Counter, FLOW_MAP_CAPACITY, FlowRecord, Handshake,
    JOB_RECORDS_CAPACITY, REACH_CAPACITY, REFUSED_RING_BYTES, ReachPorts, UDP_REFUSED_RING_BYTES,
    UDP_REPORTED_CAPACITY, UdpPeerKey,
};

#[map(name = "CP_PENDING")]
pub static PENDING: HashMap<u64, FlowRecord> = HashMap::pinned(FLOW_MAP_CAPACITY, 0);

#[map(name = "CP_FLOWS")]
pub static FLOWS: HashMap<ClientKey, FlowRecord> = HashMap::pinned(FLOW_MAP_CAPACITY, 0);

/// The gateway's own cgroup id: see `gateway_common::maps::EXEMPT`.
#[map(name = "CP_EXEMPT")]
pub static EXEMPT: Array<u64> = Array::pinned(1, 0);

/// Where each open TCP socket's record went at its SYN: see
/// [`crate::egress`].
#[map(name = "CP_HANDSHAKES")]
pub static HANDSHAKES: HashMap<u64, Handshake> = HashMap::pinned(FLOW_MAP_CAPACITY, 0);

#[map(name = "CP_DNS_PENDING")]
pub static DNS_PENDING: HashMap<u64, FlowRecord> = HashMap::pinned(FLOW_MAP_CAPACITY, 0);

#[map(name = "CP_DNS_PEERS")]
/// Keyed by local port: a dual-stack socket's IPv4 datagrams reach the
/// gateway's IPv4 listener, so the family cannot be part of the key.
pub static DNS_PEERS: HashMap<u32, FlowRecord> = HashMap::pinned(FLOW_MAP_CAPACITY, 0);

/// Written by the gateway from its policy; empty refuses every TCP connect.
#[map(name = "CP_REACH")]
pub static REACH: LpmTrie<[u8; 16], ReachPorts> = LpmTrie::pinned(REACH_CAPACITY, 0);

/// Written by the gateway from its UDP rules; empty refuses every
/// datagram outside DNS.
#[map(name = "CP_UDP_REACH")]
pub static UDP_REACH: LpmTrie<[u8; 16], ReachPorts> = LpmTrie::pinned(REACH_CAPACITY, 0);

#[map(name = "CP_UDP_PENDING")]
pub static UDP_PENDING: HashMap<u64, FlowRecord> = HashMap::pinned(FLOW_MAP_CAPACITY, 0);

/// LRU: a sender's entries cannot be found from its socket at release
/// (one per destination), so the oldest make room instead.
#[map(name = "CP_UDP_PEERS")]
pub static UDP_PEERS: LruHashMap<UdpPeerKey, FlowRecord> = LruHashMap::pinned(FLOW_MAP_CAPACITY, 0);

#[map(name = "CP_UDP_REFUSED")]
pub static UDP_REFUSED: RingBuf = RingBuf::pinned(UDP_REFUSED_RING_BYTES, 0);

#[map(name = "CP_UDP_REPORTED")]
pub static UDP_REPORTED: LruHashMap<u32, u8> = LruHashMap::pinned(UDP_REPORTED_CAPACITY, 0);

/// Records each job holds in the socket-keyed maps: see [`crate::quota`].
/// Not preallocated: an entry the gateway's sweep deletes (count 0) is
/// freed after every program that may hold it has finished, never handed
/// to another cgroup under a running program's feet.
#[map(name = "CP_JOB_RECORDS")]
pub static JOB_RECORDS: HashMap<u64, u64> =
    HashMap::pinned(JOB_RECORDS_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "CP_REFUSED")]
pub static REFUSED: RingBuf = RingBuf::pinned(REFUSED_RING_BYTES, 0);

#[map(name = "CP_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
