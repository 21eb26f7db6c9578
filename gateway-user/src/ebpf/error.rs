//! Errors of the kernel side, each saying what the operator should do.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "chokepoint must run as root (it loads BPF programs and attaches them to cgroups): run it with sudo or as the systemd service"
    )]
    NotRoot,
    #[error(
        "kernel {found} is too old: chokepoint needs Linux {need} or newer (bpf_link for cgroups, sock_release hook)"
    )]
    KernelTooOld { found: String, need: &'static str },
    #[error(
        "kernel has no BTF (/sys/kernel/btf/vmlinux is missing): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("cannot mount bpffs at {path}: {source}; mount it with `mount -t bpf bpf {path}`", path = path.display())]
    BpffsMount { path: PathBuf, source: io::Error },
    #[error(
        "no cgroup2 filesystem is mounted (checked /proc/self/mountinfo): mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error("guarded cgroup {path} does not exist: create it (mkdir {path}) or set `create = true` in [guard]", path = path.display())]
    CgroupMissing { path: PathBuf },
    #[error("{path} is not a cgroup2 directory (no cgroup.procs): [guard] cgroup must name a directory inside {mount}", path = path.display(), mount = mount.display())]
    NotACgroup { path: PathBuf, mount: PathBuf },
    #[error(
        "this binary was built without its eBPF object (AYA_BUILD_SKIP was set): rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {name}: {source}")]
    ProgramLink {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}", path = path.display())]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("bpffs entry {path}: {source}", path = path.display())]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("{path} is not on bpffs: refusing to remove anything there (pins live under /sys/fs/bpf/chokepoint/)", path = path.display())]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}", path = path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "[guard] require_family_guard is set, but the socket-family guard cannot run here: {0}; nothing was attached. Set RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK on the runner's service and remove require_family_guard"
    )]
    FamilyGuardMissing(String),
    #[error(
        "the gateway runs in the cgroup it guards ({path}): every process there would share the gateway's exemption. Run it from another cgroup (the systemd service has its own) or guard a cgroup below this one", path = path.display()
    )]
    GatewayInGuardedCgroup { path: PathBuf },
    #[error(
        "the gateway's cgroup {path} inside the guarded tree also holds other processes ({others}): they would pass the guard as the gateway does. Run the gateway in a cgroup of its own (the systemd service has one)", path = path.display()
    )]
    GatewayCgroupShared { path: PathBuf, others: String },
    #[error(
        "cannot find the gateway's own cgroup: {0}; the kernel programs exempt the gateway by it"
    )]
    OwnCgroup(String),
}

impl EbpfError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
