//! The gateway's view of the flow map: take the record of an accepted
//! connection by its client address.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use gateway_common::{ClientKey, FlowRecord, UdpPeerKey, maps};

use super::{EbpfError, typed_map};

/// Records written by the kernel, keyed by client (ip, port).
pub struct FlowTable {
    // aya's remove takes &mut self; the critical section is two syscalls.
    map: Mutex<HashMap<MapData, ClientKey, FlowRecord>>,
}

impl FlowTable {
    pub(crate) fn new(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            map: Mutex::new(typed_map(ebpf, maps::FLOWS)?),
        })
    }

    /// Removes records older than `max_age` that nobody took: their client
    /// closed before `accept()`, or a previous gateway died with them in its
    /// backlog. Returns how many were removed.
    pub fn sweep(&self, max_age: std::time::Duration) -> usize {
        let limit = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        self.forget_created_before(monotonic_ns().saturating_sub(limit))
    }

    /// Removes records created before `ns` (`CLOCK_MONOTONIC`); at start,
    /// the moment the listeners were bound: a connect before then found
    /// no gateway, and its record is only bait for a connection that
    /// reaches the listener from the same client port without one.
    pub fn forget_created_before(&self, ns: u64) -> usize {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let stale: Vec<ClientKey> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, rec)| rec.created_ns < ns)
            .map(|(key, _)| key)
            .collect();
        stale.iter().filter(|key| map.remove(key).is_ok()).count()
    }

    /// Removes and returns the record of the connection whose client end is
    /// `peer`, if the kernel wrote one.
    pub fn take(&self, peer: SocketAddr) -> Option<FlowRecord> {
        let key = client_key(peer);
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let record = map.get(&key, 0).ok()?;
        // A failed remove leaves the entry for sock_release to clean up.
        let _ = map.remove(&key);
        Some(record)
    }
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The kernel's key for a client address: IPv4 stored IPv4-mapped.
pub fn client_key(peer: SocketAddr) -> ClientKey {
    let addr = match peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    ClientKey {
        addr,
        port: peer.port(),
        _pad: [0; 6],
    }
}

/// Who sends the datagrams the gateway's DNS listener receives, keyed by
/// the sender's local port (the kernel re-keys each redirected socket's
/// record when each datagram leaves, and marks the datagram with
/// [`gateway_common::dns_tag`] of the socket, for the listener to check
/// that the record under the port is still this sender's).
pub struct DnsPeers {
    map: HashMap<MapData, u32, FlowRecord>,
}

impl DnsPeers {
    pub(crate) fn new(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            map: typed_map(ebpf, maps::DNS_PEERS)?,
        })
    }

    /// The record of the socket sending from local port `port`. Left in
    /// place: the socket may ask again; it goes when the socket closes.
    pub fn get(&self, port: u16) -> Option<FlowRecord> {
        self.map.get(&u32::from(port), 0).ok()
    }
}

/// Who sent each datagram the gateway's UDP relay receives, and where it
/// was going, keyed by the sender's local port and the packet's mark.
pub struct UdpPeers {
    map: HashMap<MapData, UdpPeerKey, FlowRecord>,
}

impl UdpPeers {
    pub(crate) fn new(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            map: typed_map(ebpf, maps::UDP_PEERS)?,
        })
    }

    /// The record of the datagram from local port `port` marked `tag`.
    /// Left in place: the kernel rewrites it for every datagram and evicts
    /// the least recently used.
    pub fn get(&self, port: u16, tag: u32) -> Option<FlowRecord> {
        let key = UdpPeerKey {
            port: u32::from(port),
            tag,
        };
        self.map.get(&key, 0).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_mapped_peers_share_a_key() {
        let v4: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert_eq!(client_key(v4), client_key(mapped));
        assert_ne!(client_key(v4), client_key("[::1]:40000".parse().unwrap()));
    }
}
