//! Loading, attaching, pinning and detaching the kernel programs, and typed
//! access to their maps. This is the only module that touches aya.
//!
//! Layout on bpffs, per instance (so tests and several daemons never share
//! state):
//!
//! ```text
//! /sys/fs/bpf/chokepoint/<instance>/links/<program>   pinned bpf_links
//! /sys/fs/bpf/chokepoint/<instance>/maps/<MAP>        pinned maps
//! ```
//!
//! Pinned links keep the programs attached when the daemon exits or crashes,
//! so redirected connections are refused while it is down (fail closed);
//! [`detach`] is the only way to remove them.
//!
//! Minimum kernel: 5.10 (bpf_link for cgroups, `sock_release`, netns cookies
//! and socket cookies in every hook used). The socket family guard, an LSM
//! hook per cgroup, needs 6.0 and the BPF LSM enabled at boot; without
//! them the rest attaches and the daemon says what is not guarded.
mod attach;
mod cgroup;
mod error;
mod exemption;
mod flows;
mod job_records;
mod pins;
mod preflight;
mod reach;
mod status;

pub use attach::{Attached, LoadOptions, attach};
pub use cgroup::{GuardedCgroup, cgroup2_mount, resolve_cgroup};
pub use error::EbpfError;
pub use exemption::{claim_pinned, own_exempt_id};
pub use flows::{DnsPeers, FlowTable, UdpPeers, monotonic_ns};
pub use job_records::JobRecords;
pub use pins::{INSTANCE_NAME_RULE, PinDir, detach, is_instance_name};
pub use preflight::{bpf_lsm, ensure_bpffs, preflight};
pub use reach::{ReachTable, RefusedFlows};
pub use status::{Status, status};

/// Takes the map `name` out of the loaded object as aya's typed map `M`.
pub(crate) fn typed_map<M>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<M, EbpfError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    M::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

/// The eBPF object compiled by `build.rs`, embedded so the daemon is one file.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

/// Programs in the object, with how each is attached. The order is the order
/// of attachment: socket creation and cleanup first, so that no socket can
/// be created between the connect hook appearing and its companions.
pub(crate) const PROGRAMS: &[(&str, ProgramKind)] = &[
    ("cp_socket_family", ProgramKind::LsmCgroup("socket_create")),
    ("cp_sock_create", ProgramKind::Sock),
    ("cp_sock_release", ProgramKind::Sock),
    ("cp_bind4", ProgramKind::SockAddr),
    ("cp_bind6", ProgramKind::SockAddr),
    ("cp_egress", ProgramKind::SkbEgress),
    ("cp_recvmsg4", ProgramKind::SockAddr),
    ("cp_recvmsg6", ProgramKind::SockAddr),
    ("cp_getpeername4", ProgramKind::SockAddr),
    ("cp_getpeername6", ProgramKind::SockAddr),
    ("cp_sendmsg4", ProgramKind::SockAddr),
    ("cp_sendmsg6", ProgramKind::SockAddr),
    ("cp_connect4", ProgramKind::SockAddr),
    ("cp_connect6", ProgramKind::SockAddr),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgramKind {
    Sock,
    SockAddr,
    /// `cgroup_skb`, attached on egress.
    SkbEgress,
    /// An LSM hook (by name) run for the tasks of the cgroup; attached
    /// only where [`bpf_lsm`] says the kernel runs it.
    LsmCgroup(&'static str),
}
