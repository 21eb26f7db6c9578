//! Types shared by the kernel programs (`gateway-ebpf`) and the gateway
//! (`gateway-user`): map keys and values, and the load-time configuration.
//!
//! Everything here is `#[repr(C)]` and `Copy` because the same bytes are read
//! by BPF code and by user space; a layout change must change both sides, so
//! both import these definitions instead of declaring their own.
//!
//! Addresses are always stored as 16 bytes in network order, IPv4 as
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`). The kernel side sees a dual-stack
//! socket's IPv4 connection as mapped and a plain IPv4 socket as IPv4; storing
//! one form lets both meet the gateway's accept-side lookup under one key.
#![no_std]

/// Names of the maps in the eBPF object (also their pin file names).
pub mod maps {
    /// Socket cookie → [`FlowRecord`](super::FlowRecord), written at connect.
    pub const PENDING: &str = "CP_PENDING";
    /// Client (ip, port) → [`FlowRecord`](super::FlowRecord), read by the gateway after accept.
    pub const FLOWS: &str = "CP_FLOWS";
    /// Per-CPU counters indexed by [`Counter`](super::Counter).
    pub const COUNTERS: &str = "CP_COUNTERS";
    /// Socket cookie → [`FlowRecord`](super::FlowRecord) of a UDP socket
    /// sending to port 53: its original server, restored on receive.
    pub const DNS_PENDING: &str = "CP_DNS_PENDING";
    /// Local UDP port (`u32`, host order) → [`FlowRecord`](super::FlowRecord):
    /// who sends the datagrams the gateway's DNS listener receives.
    pub const DNS_PEERS: &str = "CP_DNS_PEERS";
    /// LPM trie: destination prefix (IPv6, IPv4 as mapped) →
    /// [`ReachPorts`](super::ReachPorts). A TCP connect to a destination
    /// not in it is refused in the kernel: no rule could allow it.
    pub const REACH: &str = "CP_REACH";
    /// Ring buffer of [`FlowRecord`](super::FlowRecord)s of connects the
    /// kernel refused through [`REACH`], for the gateway to log.
    pub const REFUSED: &str = "CP_REFUSED";
    /// LPM trie like [`REACH`] for UDP outside DNS: a datagram to a
    /// destination not in it is refused in the kernel; one in it goes to
    /// the gateway's UDP relay, which decides.
    pub const UDP_REACH: &str = "CP_UDP_REACH";
    /// Socket cookie → [`FlowRecord`](super::FlowRecord) of a UDP socket
    /// relayed through the gateway: its latest destination, restored on
    /// receive.
    pub const UDP_PENDING: &str = "CP_UDP_PENDING";
    /// [`UdpPeerKey`](super::UdpPeerKey) → [`FlowRecord`](super::FlowRecord):
    /// who sent a datagram the relay receives, and where it was going
    /// (LRU: the kernel cannot tell when a sender is done).
    pub const UDP_PEERS: &str = "CP_UDP_PEERS";
    /// Ring buffer of [`FlowRecord`](super::FlowRecord)s of datagrams the
    /// kernel refused (no rule could allow their destination), once per
    /// socket and destination, for the gateway to log.
    pub const UDP_REFUSED: &str = "CP_UDP_REFUSED";
    /// LRU set of [`udp_tag`](super::udp_tag)s already reported through
    /// [`UDP_REFUSED`]: a socket that keeps sending to a refused
    /// destination (a metrics client) is logged once, not per datagram.
    pub const UDP_REPORTED: &str = "CP_UDP_REPORTED";
    /// cgroup id → records (`u64`) it holds in [`PENDING`],
    /// [`DNS_PENDING`] and [`UDP_PENDING`], held to
    /// [`RECORDS_PER_JOB`](super::RECORDS_PER_JOB).
    pub const JOB_RECORDS: &str = "CP_JOB_RECORDS";
    /// One `u64`: the cgroup id of the gateway process. A socket operation
    /// by a task of this cgroup (a packet of a socket made there) is the
    /// gateway's own and passes untouched. Only matters when the gateway
    /// runs inside the cgroup tree it guards (otherwise the programs never
    /// see its sockets). A job cannot forge it: joining a cgroup takes
    /// write access to its `cgroup.procs`, where a socket mark (the
    /// exemption before) needs only `CAP_NET_RAW` since Linux 5.17. A map,
    /// not a load-time constant: a restarted gateway may run in a new
    /// cgroup and must name it before it binds its ports. 0: nothing is
    /// exempt.
    pub const EXEMPT: &str = "CP_EXEMPT";
    /// Socket cookie → [`Handshake`](super::Handshake) of a TCP socket
    /// whose SYN moved its record to [`FLOWS`], until it is released.
    pub const HANDSHAKES: &str = "CP_HANDSHAKES";
}

/// Prefixes [`maps::REACH`] holds at most.
pub const REACH_CAPACITY: u32 = 4096;

/// Port ranges one [`ReachPorts`] holds; more are merged (wider, never narrower).
pub const REACH_SPANS: usize = 16;

/// Bytes of the [`maps::REFUSED`] ring buffer (a power of two, a page multiple).
pub const REFUSED_RING_BYTES: u32 = 256 * 1024;

/// Bytes of the [`maps::UDP_REFUSED`] ring buffer.
pub const UDP_REFUSED_RING_BYTES: u32 = 64 * 1024;

/// (socket, destination) pairs [`maps::UDP_REPORTED`] remembers.
pub const UDP_REPORTED_CAPACITY: u32 = 16_384;

/// Inclusive port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSpan {
    pub first: u16,
    pub last: u16,
}

/// The ports some rule may allow on a destination prefix: `spans[..count]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReachPorts {
    pub count: u32,
    pub spans: [PortSpan; REACH_SPANS],
}

impl ReachPorts {
    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        let mut i = 0;
        // A fixed bound the verifier can see, whatever `count` says.
        while i < REACH_SPANS {
            if (i as u32) < self.count && self.spans[i].first <= port && port <= self.spans[i].last
            {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Name of the read-only global holding [`GatewayConfig`].
pub const CONFIG_GLOBAL: &str = "CP_CONFIG";

/// Capacity of each flow map. Entries live only between `connect()` and the
/// gateway's `accept()` (or the socket's close), so this bounds concurrent
/// connection attempts, not total connections.
pub const FLOW_MAP_CAPACITY: u32 = 65_536;

/// Records one job (cgroup) may hold at once in the socket-keyed maps
/// (connects whose SYN has not left, UDP sockets that sent): a job's own
/// connects and sends fail past it, so one job cannot fill maps every job
/// shares. A TCP socket is charged until it is released (its record may
/// wait in [`maps::FLOWS`] for the gateway), a UDP socket once it sent.
pub const RECORDS_PER_JOB: u32 = 4096;

/// Jobs whose record counts are kept at once. Counts back at zero are
/// deleted by the gateway; a job that finds the map full is not counted
/// (and not refused).
pub const JOB_RECORDS_CAPACITY: u32 = 16_384;

/// `comm` length in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Where guarded connections are sent and how the gateway's own sockets are
/// recognised. Set once at load time as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Gateway TCP listener port, host byte order.
    pub listen_port: u16,
    /// Gateway UDP DNS listener port, host byte order; 0: UDP DNS is
    /// refused like all UDP.
    pub dns_port: u16,
    /// Gateway UDP relay port, host byte order; 0: UDP outside DNS is
    /// refused.
    pub udp_port: u16,
    /// 1: a TCP socket's packets for anywhere but loopback are dropped
    /// (`[guard] loopback_clients_only`), the gateway's own excepted.
    pub loopback_clients_only: u8,
    pub _pad: [u8; 9],
    /// Cookie of the network namespace the gateway listens in. A guarded
    /// socket in any other namespace is refused at connect and send: its
    /// redirect could never reach the gateway, and the records it left
    /// (keyed by a loopback port that namespace may reuse) could be taken
    /// for another job's connection. 0: not known, no check.
    pub netns_cookie: u64,
}

/// A datagram the gateway's UDP relay receives, as the relay sees it: the
/// sender's local port (host order) and the packet mark the kernel's
/// egress program set, which names the (socket, destination) pair. The
/// mark makes each datagram carry its own destination, so an unconnected
/// socket that alternates between destinations is relayed correctly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpPeerKey {
    pub port: u32,
    pub tag: u32,
}

/// The packet mark of a relayed datagram: a hash of the sending socket and
/// its destination, never 0 (an unmarked packet).
#[inline(always)]
pub fn udp_tag(cookie: u64, dst_addr: &[u8; 16], dst_port: u16) -> u32 {
    // FNV-1a: a collision only ever confuses two destinations of the same
    // socket and sender port, both decided for the same caller.
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    let c = cookie.to_le_bytes();
    while i < 8 {
        h = (h ^ c[i] as u32).wrapping_mul(0x0100_0193);
        i += 1;
    }
    i = 0;
    while i < 16 {
        h = (h ^ dst_addr[i] as u32).wrapping_mul(0x0100_0193);
        i += 1;
    }
    let p = dst_port.to_le_bytes();
    h = (h ^ p[0] as u32).wrapping_mul(0x0100_0193);
    h = (h ^ p[1] as u32).wrapping_mul(0x0100_0193);
    if h == 0 { 1 } else { h }
}

/// The packet mark of a datagram to the DNS listener: a hash of the
/// sending socket alone, never 0. The listener's record for a sender is
/// keyed by local port, which two sockets on different local addresses can
/// share; the mark tells whose datagram it is, so one socket's record is
/// never taken for another's. (The destination stays out: a musl-style
/// socket asks several servers at once and may be answered for any.)
#[inline(always)]
pub fn dns_tag(cookie: u64) -> u32 {
    udp_tag(cookie, &[0; 16], 0)
}

/// A socket's client-side address as seen by the gateway's `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// IPv6 or IPv4-mapped address, network order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Where a TCP socket's record went at its SYN, and whose share it is
/// charged to, so that its release can find both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshake {
    pub client: ClientKey,
    pub cgroup_id: u64,
}

/// Who opened a guarded socket and where it was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Socket cookie: identifies the client socket across hooks.
    pub cookie: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at `connect()`. Records the gateway
    /// never takes (a client gone before `accept()`, a crash with a full
    /// backlog) are swept by age, since the kernel cannot tell when the
    /// gateway has given up on them.
    pub created_ns: u64,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// Original destination, IPv6 or IPv4-mapped, network order.
    pub dst_addr: [u8; 16],
    /// Original destination port, host byte order.
    pub dst_port: u16,
    /// `AF_INET` or `AF_INET6`: the family of the socket that connected.
    pub family: u16,
    /// Thread-group id (the process id user space sees).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Indices into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP connects redirected to the gateway.
    Redirected = 0,
    /// Connects or sends refused in the kernel (UDP, map full, ...).
    Denied = 1,
    /// Sockets refused at creation (raw, ICMP, SCTP, ..., and families
    /// other than local and inet ones: vsock, packet, ...).
    SocketDenied = 2,
    /// Socket operations of the gateway itself let through untouched.
    Exempt = 3,
    /// Records that could not be stored: the connect was refused instead.
    RecordFailed = 4,
    /// TCP connects refused because no rule could allow the destination.
    Unreachable = 5,
    /// Of those, the ones the gateway could not be told about (ring full).
    RefusedUnlogged = 6,
    /// UDP datagrams (outside DNS) sent to the gateway's relay.
    UdpRelayed = 7,
    /// Connects or sends refused because their job holds
    /// [`RECORDS_PER_JOB`] records already.
    JobQuota = 8,
}

/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = 9;

/// Address family constants, as the kernel reports them in socket contexts.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Builds the stored (IPv4-mapped) form of an IPv4 address given as the
/// kernel's network-order `u32`.
#[inline(always)]
pub fn mapped_v4(ip_be: u32) -> [u8; 16] {
    let o = ip_be.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// Builds the stored form of an IPv6 address given as the kernel's four
/// network-order `u32` words.
#[inline(always)]
pub fn v6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers and byte arrays with
    // explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::GatewayConfig {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::Handshake {}
    unsafe impl aya::Pod for super::FlowRecord {}
    unsafe impl aya::Pod for super::ReachPorts {}
    unsafe impl aya::Pod for super::UdpPeerKey {}
}
