//! The kernel's reachable set ([`crate::policy::ReachEntry`]) and the ring
//! of connects it refused.
use std::collections::HashSet;

use aya::maps::{
    MapData, MapError, RingBuf,
    lpm_trie::{Key, LpmTrie},
};
use gateway_common::{FlowRecord, PortSpan, REACH_SPANS, ReachPorts};

use tokio::io::{Interest, unix::AsyncFd};

use super::{EbpfError, typed_map};
use crate::policy::ReachEntry;

/// `CP_REACH` (TCP) or `CP_UDP_REACH`, written from the policy at start
/// and on every reload.
pub struct ReachTable {
    map: LpmTrie<MapData, [u8; 16], ReachPorts>,
    name: &'static str,
}

impl ReachTable {
    pub(crate) fn new(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<Self, EbpfError> {
        Ok(Self {
            map: typed_map(ebpf, name)?,
            name,
        })
    }

    /// The map's name, for errors.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Makes the trie hold exactly `entries`. New and changed prefixes go
    /// in before stale ones come out, so while it runs the trie holds the
    /// union of both policies' sets and nothing allowed is refused.
    pub fn sync(&mut self, entries: &[ReachEntry]) -> Result<(), MapError> {
        let mut wanted = HashSet::with_capacity(entries.len());
        for e in entries {
            let key = Key::new(u32::from(e.prefix_len), e.addr);
            self.map.insert(&key, ports(&e.ports), 0)?;
            wanted.insert((e.prefix_len, e.addr));
        }
        let stale: Vec<Key<[u8; 16]>> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let len = u8::try_from(k.prefix_len()).unwrap_or(u8::MAX);
                !wanted.contains(&(len, k.data()))
            })
            .collect();
        for key in stale {
            self.map.remove(&key)?;
        }
        Ok(())
    }
}

fn ports(ranges: &[(u16, u16)]) -> ReachPorts {
    let mut out = ReachPorts::default();
    for (slot, &(first, last)) in out.spans.iter_mut().zip(ranges.iter().take(REACH_SPANS)) {
        *slot = PortSpan { first, last };
    }
    out.count = ranges.len().min(REACH_SPANS) as u32;
    out
}

/// `CP_REFUSED` (TCP connects) or `CP_UDP_REFUSED` (datagrams): records
/// of what the kernel refused through a trie, in the order it refused them.
pub struct RefusedFlows {
    ring: RingBuf<MapData>,
}

impl RefusedFlows {
    pub(crate) fn new(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<Self, EbpfError> {
        Ok(Self {
            ring: typed_map(ebpf, name)?,
        })
    }

    /// Registers the ring with the current tokio runtime.
    pub fn listen(self) -> std::io::Result<RefusedListener> {
        // SAFETY: the RingBuf owns its map's fd, which stays open and is
        // the one as_raw_fd returns for as long as the RingBuf lives, and
        // the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(self.ring, Interest::READABLE) }?;
        Ok(RefusedListener { ring })
    }
}

/// [`RefusedFlows`] on the runtime.
pub struct RefusedListener {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl RefusedListener {
    /// Waits for, then returns, every record the kernel has queued.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<FlowRecord>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            // Cleared before draining: a record the kernel adds after this
            // marks the ring ready again, so none waits for the next one.
            guard.clear_ready();
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<FlowRecord>() {
                    // SAFETY: the kernel side writes whole FlowRecords
                    // (plain integers and bytes: any bit pattern is valid);
                    // read unaligned since the ring's alignment is not ours.
                    out.push(unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<FlowRecord>())
                    });
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}
