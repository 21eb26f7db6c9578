//! Loading the object, attaching every program to the guarded cgroup and
//! pinning the links, replacing (never interrupting) a previous instance.
use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, LsmCgroup,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use gateway_common::{CONFIG_GLOBAL, GatewayConfig, maps};

use super::{
    DnsPeers, EbpfError, FlowTable, GuardedCgroup, JobRecords, OBJECT, PROGRAMS, PinDir,
    ProgramKind, ReachTable, RefusedFlows, UdpPeers, pins::remove_tree,
};

/// Suffix of a link pinned beside the one it replaces (bpffs refuses
/// names containing dots).
const STAGED: &str = "_staged";

/// What the loader needs to know.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub instance: String,
    pub listen_port: u16,
    /// The gateway's UDP DNS listener; 0 refuses DNS over UDP too.
    pub dns_port: u16,
    /// The gateway's UDP relay; 0 refuses UDP outside DNS.
    pub udp_port: u16,
    /// What the connect hooks may let through to the gateway; written
    /// before any program is attached.
    pub reach: Vec<crate::policy::ReachEntry>,
    /// The same for datagrams outside DNS.
    pub udp_reach: Vec<crate::policy::ReachEntry>,
    /// Fail instead of attaching the rest when the socket-family guard
    /// cannot run (`[guard] require_family_guard`).
    pub require_family_guard: bool,
    /// `[guard] loopback_clients_only`.
    pub loopback_clients_only: bool,
    /// The gateway's own cgroup id ([`super::own_exempt_id`]).
    pub exempt_cgroup: u64,
}

/// Programs attached and pinned for one instance; holds the map handles
/// the gateway uses. Dropping it leaves the programs attached (they are
/// pinned): that is what keeps the host fail-closed.
pub struct Attached {
    pub pins: PinDir,
    pub cgroup: PathBuf,
    /// Whether pins of an earlier run were found and replaced.
    pub adopted: bool,
    /// `Err`: why sockets of other families than local and inet ones are
    /// not refused in the guarded cgroup (the kernel cannot run the hook).
    pub family_guard: Result<(), String>,
    pub flows: FlowTable,
    /// Each job's count of socket-keyed records; swept of zeros.
    pub job_records: JobRecords,
    pub dns_peers: DnsPeers,
    pub udp_peers: UdpPeers,
    /// Rewritten on every policy reload.
    pub reach: std::sync::Mutex<ReachTable>,
    pub udp_reach: std::sync::Mutex<ReachTable>,
    /// Taken by the task that logs connects the kernel refused.
    pub refused: std::sync::Mutex<Option<RefusedFlows>>,
    /// Taken by the task that logs datagrams the kernel refused.
    pub udp_refused: std::sync::Mutex<Option<RefusedFlows>>,
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("pins", &self.pins)
            .field("cgroup", &self.cgroup)
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

/// Loads the programs and attaches them to `cgroup`.
///
/// If the instance already has pins (a previous daemon crashed or was
/// stopped), its maps are reused, the new links are attached before the old
/// ones are removed, so there is no moment without a guard. On failure
/// nothing new stays attached, and a fresh instance leaves no pins.
pub fn attach(opts: &LoadOptions, cgroup: &GuardedCgroup) -> Result<Attached, EbpfError> {
    if OBJECT.is_empty() {
        return Err(EbpfError::NoObject);
    }
    let pins = PinDir::new(&opts.instance);
    let adopted = pins.has_links();
    let fresh = !pins.root.exists();
    let result = load_and_attach(opts, cgroup, &pins, adopted);
    if result.is_err() && fresh {
        // Best effort: the original error is what the operator needs.
        let _ = remove_tree(&pins.root);
    }
    result
}

fn load_and_attach(
    opts: &LoadOptions,
    cgroup: &GuardedCgroup,
    pins: &PinDir,
    adopted: bool,
) -> Result<Attached, EbpfError> {
    let maps_dir = pins.maps();
    std::fs::create_dir_all(&maps_dir).map_err(EbpfError::io(&maps_dir))?;
    std::fs::create_dir_all(pins.links()).map_err(EbpfError::io(pins.links()))?;
    let config = GatewayConfig {
        listen_port: opts.listen_port,
        dns_port: opts.dns_port,
        udp_port: opts.udp_port,
        loopback_clients_only: u8::from(opts.loopback_clients_only),
        _pad: [0; 9],
        netns_cookie: own_netns_cookie(),
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, &config, true)
        .default_map_pin_directory(&maps_dir)
        .load(OBJECT)?;
    // Before the new programs can run: with no id every gateway socket in
    // the guarded tree would be a job's.
    let mut exempt = super::typed_map(&mut ebpf, maps::EXEMPT)?;
    super::exemption::write(&mut exempt, opts.exempt_cgroup)?;
    // Before the new programs can run: an empty trie refuses every connect.
    let mut reach = ReachTable::new(&mut ebpf, maps::REACH)?;
    let mut udp_reach = ReachTable::new(&mut ebpf, maps::UDP_REACH)?;
    for (table, entries) in [(&mut reach, &opts.reach), (&mut udp_reach, &opts.udp_reach)] {
        table.sync(entries).map_err(|source| EbpfError::Map {
            name: table.name(),
            source,
        })?;
    }
    let refused = RefusedFlows::new(&mut ebpf, maps::REFUSED)?;
    let udp_refused = RefusedFlows::new(&mut ebpf, maps::UDP_REFUSED)?;
    let mut family_guard = super::bpf_lsm();
    let btf = match family_guard {
        Ok(()) => Some(aya::Btf::from_sys_fs().map_err(|e| EbpfError::Btf(e.to_string()))?),
        Err(_) => None,
    };

    // Links always stack with other programs on the cgroup (the kernel
    // rejects BPF_F_ALLOW_MULTI on link_create), so "Single" here is the
    // flag-less link attach, not exclusive ownership.
    // Attach everything first; links not yet pinned detach on drop, so an
    // error here leaves nothing behind.
    let mut links: Vec<(&'static str, FdLink)> = Vec::with_capacity(PROGRAMS.len());
    for &(name, kind) in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(EbpfError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let err = |source| EbpfError::Program { name, source };
        let link: FdLink = match kind {
            ProgramKind::Sock => {
                let p: &mut CgroupSock = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                let id = p
                    .attach(&cgroup.file, CgroupAttachMode::Single)
                    .map_err(err)?;
                fd_link(name, p.take_link(id).map_err(err)?)?
            }
            ProgramKind::SockAddr => {
                let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                let id = p
                    .attach(&cgroup.file, CgroupAttachMode::Single)
                    .map_err(err)?;
                fd_link(name, p.take_link(id).map_err(err)?)?
            }
            ProgramKind::LsmCgroup(hook) => {
                let Some(btf) = &btf else {
                    continue;
                };
                let p: &mut LsmCgroup = program.try_into().map_err(err)?;
                // Some kernels refuse LSM (and tracing) programs to root
                // too, by policy: the guard is then missing, not broken,
                // and the daemon says so like where the BPF LSM is off.
                if let Err(e) = p.load(hook, btf) {
                    // A refusal by policy comes with an empty verifier log,
                    // which would end the message in "Verifier output: ".
                    let e = e.to_string();
                    let e = e.trim_end().trim_end_matches("Verifier output:").trim_end();
                    family_guard = Err(format!("the kernel refused to load the LSM program: {e}"));
                    continue;
                }
                let id = p.attach(&cgroup.file).map_err(err)?;
                FdLink::from(p.take_link(id).map_err(err)?)
            }
            ProgramKind::SkbEgress => {
                let p: &mut CgroupSkb = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                let id = p
                    .attach(
                        &cgroup.file,
                        CgroupSkbAttachType::Egress,
                        CgroupAttachMode::Single,
                    )
                    .map_err(err)?;
                fd_link(name, p.take_link(id).map_err(err)?)?
            }
        };
        links.push((name, link));
    }
    // Before anything is pinned: the links above detach as they drop.
    if opts.require_family_guard
        && let Err(why) = &family_guard
    {
        return Err(EbpfError::FamilyGuardMissing(why.clone()));
    }

    // Pin the new generation beside the old one, then swap: while both are
    // attached a connect is redirected once (the second program sees the
    // gateway as destination and leaves it alone).
    let mut staged = Vec::with_capacity(links.len());
    for (name, link) in links {
        let tmp = pins.links().join(format!("{name}{STAGED}"));
        let _ = std::fs::remove_file(&tmp);
        let pinned = link.pin(&tmp).map_err(|source| EbpfError::Pin {
            path: tmp.clone(),
            source,
        })?;
        staged.push((name, pinned));
    }
    for (name, pinned) in staged {
        let final_path = pins.link(name);
        if final_path.exists() {
            let old = PinnedLink::from_pin(&final_path).map_err(|source| EbpfError::Link {
                path: final_path.clone(),
                source,
            })?;
            drop(old.unpin().map_err(EbpfError::io(&final_path))?);
        }
        let tmp = pins.links().join(format!("{name}{STAGED}"));
        std::fs::rename(&tmp, &final_path).map_err(EbpfError::io(&final_path))?;
        drop(pinned);
    }
    remove_retired_links(pins);

    let flows = FlowTable::new(&mut ebpf)?;
    let job_records = JobRecords::new(&mut ebpf)?;
    let dns_peers = DnsPeers::new(&mut ebpf)?;
    let udp_peers = UdpPeers::new(&mut ebpf)?;
    Ok(Attached {
        pins: pins.clone(),
        cgroup: cgroup.path.clone(),
        adopted,
        family_guard,
        flows,
        job_records,
        dns_peers,
        udp_peers,
        reach: std::sync::Mutex::new(reach),
        udp_reach: std::sync::Mutex::new(udp_reach),
        refused: std::sync::Mutex::new(Some(refused)),
        udp_refused: std::sync::Mutex::new(Some(udp_refused)),
        _ebpf: ebpf,
    })
}

/// Detaches links an earlier version pinned for programs this one no
/// longer has (a renamed program would otherwise keep running its old code
/// beside the new one). Runs after the new generation is attached. A link
/// that cannot be removed is reported, not fatal: it is one of ours, and
/// refusing to start over it would leave every job without a gateway.
fn remove_retired_links(pins: &PinDir) {
    let Ok(entries) = std::fs::read_dir(pins.links()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if PROGRAMS.iter().any(|&(p, _)| *p == *name) {
            continue;
        }
        let path = entry.path();
        let removed = PinnedLink::from_pin(&path)
            .map_err(|e| e.to_string())
            .and_then(|link| link.unpin().map(drop).map_err(|e| e.to_string()));
        if let Err(e) = removed {
            tracing::warn!(link = %path.display(), error = %e, "cannot detach a program an earlier version left attached; `chokepoint detach` removes it");
        }
    }
}

/// Program-specific links become plain fd links, the kind that can be pinned.
fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, EbpfError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    FdLink::try_from(link).map_err(|source| EbpfError::ProgramLink { name, source })
}

/// The cookie of this process's network namespace (where the gateway's
/// listeners are), or 0 where the kernel cannot tell (before Linux 5.14):
/// the programs then skip the namespace check.
fn own_netns_cookie() -> u64 {
    let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return 0;
    };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an 8-byte buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot read this network namespace's cookie; guarded sockets in other namespaces are not refused at connect"
        );
        return 0;
    }
    cookie
}
