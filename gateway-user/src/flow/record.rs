//! The flow record, recovered from the kernel by the client's address.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use gateway_common::FlowRecord;

use crate::ebpf::FlowTable;

/// One guarded connection: what the kernel saw at `connect()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Gateway-local id, for correlating log lines.
    pub id: u64,
    /// The client's address as the gateway's listener saw it.
    pub peer: SocketAddr,
    /// Where the client wanted to go. IPv4-mapped destinations are reported
    /// as IPv4: that is the connection the client actually made. The
    /// unspecified address (`0.0.0.0`, `::`) is reported as the loopback
    /// address of its family, which is where the kernel routes it (found
    /// in review: rules matched it as written, so a deny on a loopback
    /// service did not apply, and the gateway's own connect to `0.0.0.0`
    /// reached that service).
    pub dst: SocketAddr,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
}

impl Flow {
    /// A datagram's flow (DNS, or relayed UDP): its sender as the kernel
    /// recorded it.
    pub fn from_datagram(peer: SocketAddr, rec: &FlowRecord) -> Self {
        Self::from_record(NEXT_ID.fetch_add(1, Ordering::Relaxed), peer, rec)
    }

    /// A connect the kernel refused: it never had a client address.
    pub fn refused_in_kernel(rec: &FlowRecord) -> Self {
        let peer = SocketAddr::from(([0, 0, 0, 0], 0));
        Self::from_record(NEXT_ID.fetch_add(1, Ordering::Relaxed), peer, rec)
    }

    fn from_record(id: u64, peer: SocketAddr, rec: &FlowRecord) -> Self {
        let v6 = Ipv6Addr::from(rec.dst_addr);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(v4) => IpAddr::V4(v4),
            None if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            None => IpAddr::V6(v6),
        };
        let comm_len = rec
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(rec.comm.len());
        Self {
            id,
            peer,
            dst: SocketAddr::new(ip, rec.dst_port),
            pid: rec.pid,
            uid: rec.uid,
            gid: rec.gid,
            comm: String::from_utf8_lossy(&rec.comm[..comm_len]).into_owned(),
            cgroup_id: rec.cgroup_id,
            netns_cookie: rec.netns_cookie,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(
        "no flow record for client {0}: the connection did not come through the kernel redirect (a direct connection to the gateway port, or a record lost to a full map); refusing it"
    )]
    NoRecord(SocketAddr),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The kernel writes the record before the client's final ACK, so it is
/// normally there at the first look; the short retry covers a record whose
/// map update is still in flight on another CPU. Never guesses: no record,
/// no flow.
pub async fn recover(table: &FlowTable, peer: SocketAddr) -> Result<Flow, FlowError> {
    for attempt in 0..3u32 {
        if let Some(rec) = table.take(peer) {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            return Ok(Flow::from_record(id, peer, &rec));
        }
        tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
    }
    Err(FlowError::NoRecord(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dst: Ipv6Addr, comm: &[u8]) -> FlowRecord {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        FlowRecord {
            cookie: 1,
            created_ns: 0,
            cgroup_id: 2,
            netns_cookie: 3,
            dst_addr: dst.octets(),
            dst_port: 5432,
            family: 10,
            pid: 4,
            uid: 5,
            gid: 6,
            comm: c,
        }
    }

    #[test]
    fn unspecified_destinations_are_reported_as_loopback() {
        let peer = "127.0.0.1:1".parse().unwrap();
        for (dst, seen) in [("::ffff:0.0.0.0", "127.0.0.1:5432"), ("::", "[::1]:5432")] {
            let flow = Flow::from_record(1, peer, &record(dst.parse().unwrap(), b"nc"));
            assert_eq!(flow.dst, seen.parse().unwrap(), "{dst}");
        }
    }

    #[test]
    fn mapped_destination_is_reported_as_ipv4() {
        let peer = "127.0.0.1:1".parse().unwrap();
        let flow = Flow::from_record(
            1,
            peer,
            &record("::ffff:127.0.0.2".parse().unwrap(), b"psql"),
        );
        assert_eq!(flow.dst, "127.0.0.2:5432".parse().unwrap());
        assert_eq!(flow.comm, "psql");
    }

    #[test]
    fn full_length_comm_without_nul() {
        let peer = "[::1]:1".parse().unwrap();
        let flow = Flow::from_record(1, peer, &record(Ipv6Addr::LOCALHOST, b"0123456789abcdef"));
        assert_eq!(flow.dst, "[::1]:5432".parse().unwrap());
        assert_eq!(flow.comm, "0123456789abcdef");
    }
}
