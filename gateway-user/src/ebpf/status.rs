//! What an instance has in the kernel right now: attachment, map fill and
//! counters. Read from the pins, so it works while the daemon is down.
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use gateway_common::{ClientKey, Counter, FlowRecord, Handshake, maps};
use serde::Serialize;

use super::{EbpfError, PinDir};

#[derive(Debug, Serialize)]
pub struct Status {
    pub instance: String,
    pub attached: bool,
    pub links: Vec<String>,
    pub maps: MapFill,
    pub counters: Counters,
}

#[derive(Debug, Default, Serialize)]
pub struct MapFill {
    pub pending: usize,
    pub flows: usize,
    /// Open TCP sockets whose record went to `flows` at their SYN; each
    /// holds its job's charge until it is released.
    pub handshakes: usize,
    /// Jobs (cgroups) holding kernel records, as the record share counts
    /// them (counts back at zero are swept every 15 s).
    pub jobs: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub redirected: u64,
    pub denied: u64,
    pub socket_denied: u64,
    pub exempt: u64,
    pub record_failed: u64,
    /// TCP connects refused in the kernel: no rule could allow them.
    pub unreachable: u64,
    /// Of those, the ones the gateway was not told about (ring full).
    pub refused_unlogged: u64,
    /// Datagrams (outside DNS) sent to the gateway's UDP relay.
    pub udp_relayed: u64,
    /// Connects and sends refused because their job held its share of the
    /// kernel's socket records.
    pub job_quota: u64,
}

pub fn status(instance: &str) -> Result<Status, EbpfError> {
    let pins = PinDir::new(instance);
    let mut links: Vec<String> = std::fs::read_dir(pins.links())
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    links.sort();
    let mut status = Status {
        instance: instance.to_owned(),
        attached: !links.is_empty(),
        links,
        maps: MapFill::default(),
        counters: Counters::default(),
    };
    if !pins.maps().exists() {
        return Ok(status);
    }
    let pending: HashMap<MapData, u64, FlowRecord> = open(&pins, maps::PENDING, "CP_PENDING")?;
    let flows: HashMap<MapData, ClientKey, FlowRecord> = open(&pins, maps::FLOWS, "CP_FLOWS")?;
    // Absent in pins of a gateway from before the share: none counted.
    let jobs = open::<u64, u64>(&pins, maps::JOB_RECORDS, "CP_JOB_RECORDS")
        .map(|m| m.keys().count())
        .unwrap_or(0);
    // Absent in pins of a gateway from before the release clean-up.
    let handshakes = open::<u64, Handshake>(&pins, maps::HANDSHAKES, "CP_HANDSHAKES")
        .map(|m| m.keys().count())
        .unwrap_or(0);
    status.maps = MapFill {
        pending: pending.keys().count(),
        flows: flows.keys().count(),
        handshakes,
        jobs,
    };

    let path = pins.map(maps::COUNTERS);
    let data = MapData::from_pin(&path).map_err(|source| EbpfError::Map {
        name: "CP_COUNTERS",
        source,
    })?;
    let counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .map_err(|source| EbpfError::Map {
            name: "CP_COUNTERS",
            source,
        })?;
    let sum = |c: Counter| -> u64 {
        counters
            .get(&(c as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    };
    status.counters = Counters {
        redirected: sum(Counter::Redirected),
        denied: sum(Counter::Denied),
        socket_denied: sum(Counter::SocketDenied),
        exempt: sum(Counter::Exempt),
        record_failed: sum(Counter::RecordFailed),
        unreachable: sum(Counter::Unreachable),
        refused_unlogged: sum(Counter::RefusedUnlogged),
        udp_relayed: sum(Counter::UdpRelayed),
        job_quota: sum(Counter::JobQuota),
    };
    Ok(status)
}

fn open<K: aya::Pod, V: aya::Pod>(
    pins: &PinDir,
    file: &str,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, EbpfError> {
    let data =
        MapData::from_pin(pins.map(file)).map_err(|source| EbpfError::Map { name, source })?;
    HashMap::try_from(Map::HashMap(data)).map_err(|source| EbpfError::Map { name, source })
}
