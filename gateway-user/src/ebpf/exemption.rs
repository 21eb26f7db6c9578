//! The gateway's own cgroup, whose socket operations the programs let
//! through, kept in the pinned `CP_EXEMPT` map rather than compiled into
//! the programs: on `systemctl restart` systemd gives the service a new
//! cgroup (a new id), and the new daemon binds its ports while the
//! previous programs are still attached. It names itself in the map
//! first, so those programs let its binds through.
use std::os::unix::fs::MetadataExt;

use aya::maps::{Array, Map, MapData};
use gateway_common::maps;

use super::{EbpfError, GuardedCgroup, PinDir, cgroup::own_cgroup};

/// This process's cgroup id, to be exempt. The guarded cgroup itself is
/// refused: whatever else runs there (the jobs) would pass too. Below it
/// is fine when the gateway has its cgroup to itself, as the systemd
/// service does when the guard is the cgroup2 root: a job cannot join it
/// without write access to its `cgroup.procs`. A cgroup below it that
/// holds other processes too (an admin's session scope, where a
/// `chokepoint run` started by hand lives with whatever else that session
/// starts) is refused, found in review. A process joining later is not
/// seen.
pub fn own_exempt_id(guarded: &GuardedCgroup) -> Result<u64, EbpfError> {
    let own = own_cgroup()?;
    let guarded_id = guarded
        .file
        .metadata()
        .map_err(EbpfError::io(&guarded.path))?
        .ino();
    if own.id == guarded_id {
        return Err(EbpfError::GatewayInGuardedCgroup { path: own.path });
    }
    if own.path.starts_with(&guarded.path) && !own.others.is_empty() {
        return Err(EbpfError::GatewayCgroupShared {
            others: own.others.join(", "),
            path: own.path,
        });
    }
    tracing::debug!(cgroup = %own.path.display(), id = own.id, "the gateway's own cgroup is exempt");
    Ok(own.id)
}

/// Names `id` as the gateway's cgroup in the pinned map of an instance
/// whose programs are still attached; nothing to do for a fresh instance
/// (or pins of a release that exempted by socket mark, which the gateway's
/// sockets still carry).
pub fn claim_pinned(pins: &PinDir, id: u64) -> Result<(), EbpfError> {
    let path = pins.map(maps::EXEMPT);
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&path).map_err(|source| EbpfError::Map {
        name: "CP_EXEMPT",
        source,
    })?;
    let mut map = Array::try_from(Map::Array(data)).map_err(|source| EbpfError::Map {
        name: "CP_EXEMPT",
        source,
    })?;
    write(&mut map, id)
}

/// Writes `id` into the map's one slot.
pub(crate) fn write(map: &mut Array<MapData, u64>, id: u64) -> Result<(), EbpfError> {
    map.set(0, id, 0).map_err(|source| EbpfError::Map {
        name: "CP_EXEMPT",
        source,
    })
}
