//! `chokepoint doctor`: what this host needs, and who could undo the guard.
use super::output::say;
use std::{path::Path, process::ExitCode};

use crate::ebpf;

/// The link of the LSM hook that refuses other socket families.
const FAMILY_GUARD: &str = "cp_socket_family";
const NO_FAMILY_GUARD: &str = "not guarded: a job can open vsock, packet and other sockets no hook sees; set RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK on the runner's service";

pub(super) fn doctor(config: Option<&Path>) -> ExitCode {
    let mut problems = 0;
    let mut report = |ok: bool, what: &str, detail: String| {
        say!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
        if !ok {
            problems += 1;
        }
    };
    match ebpf::preflight() {
        Ok(()) => report(
            true,
            "kernel",
            "root, kernel version and BTF are fine".into(),
        ),
        Err(e) => report(false, "kernel", e.to_string()),
    }
    match ebpf::cgroup2_mount() {
        Ok(p) => report(true, "cgroup2", format!("mounted at {}", p.display())),
        Err(e) => report(false, "cgroup2", e.to_string()),
    }
    let bpffs = nix::sys::statfs::statfs("/sys/fs/bpf")
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    report(
        true,
        "bpffs",
        if bpffs {
            "mounted at /sys/fs/bpf".into()
        } else {
            "not mounted (the daemon mounts it)".into()
        },
    );
    if let Some(config) = config {
        match crate::policy::Policy::load(config) {
            Ok(p) => {
                report(true, "config", p.summary());
                let d = p.daemon();
                match crate::flow::automatic_ports::check(&[
                    ("listen_port", d.listen_port),
                    ("dns_port", d.dns_port),
                    ("udp_port", d.udp_port),
                ]) {
                    Ok(()) => report(
                        true,
                        "ports",
                        "no gateway port can be handed to a job as an automatic port".into(),
                    ),
                    Err(e) => report(false, "ports", e),
                }
                let instance = &p.daemon().instance;
                let attached = ebpf::PinDir::new(instance).has_links();
                report(
                    attached,
                    "guard",
                    if attached {
                        format!("instance {instance} is attached")
                    } else {
                        format!("instance {instance} is not attached: start the daemon")
                    },
                );
                if attached {
                    let families = ebpf::PinDir::new(instance).link(FAMILY_GUARD).exists();
                    report(
                        families,
                        "socket families",
                        if families {
                            "only unix, inet, netlink and alg sockets can be created in the guarded cgroup".into()
                        } else {
                            format!(
                                "{NO_FAMILY_GUARD} ({})",
                                ebpf::bpf_lsm().err().unwrap_or_else(|| {
                                    "the kernel refused the LSM program: see the daemon's log"
                                        .into()
                                })
                            )
                        },
                    );
                }
            }
            Err(e) => report(false, "config", format!("\n{e}")),
        }
    }
    // Threat model: anyone who can become root or load BPF can lift the guard.
    let unpriv_bpf = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    report(
        unpriv_bpf == "1" || unpriv_bpf == "2",
        "unprivileged BPF",
        format!("kernel.unprivileged_bpf_disabled = {unpriv_bpf:?} (want 1 or 2)"),
    );
    // Found in review: a job may take a socket from a process it may trace
    // (`pidfd_getfd`, ptrace: same uid), and one made outside the guarded
    // cgroup was never redirected. Yama's scope 1 allows tracing
    // descendants only.
    let ptrace = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .map(|s| s.trim().to_owned())
        .ok();
    report(
        ptrace.as_deref().is_some_and(|s| s != "0"),
        "ptrace",
        match ptrace {
            Some(scope) => format!(
                "kernel.yama.ptrace_scope = {scope:?} (want 1 or more, or no process outside the guard under a job's uid: a job could take its sockets)"
            ),
            None => "Yama is not in this kernel: run no process outside the guard under a job's uid, or a job could take its sockets (pidfd_getfd, ptrace)".into(),
        },
    );
    // Through NSS, so groups from sssd or LDAP count; found in review:
    // reading /etc/group alone skipped them, and an unreadable file
    // skipped the check without a word.
    for group in ["sudo", "wheel", "docker", "lxd", "libvirt"] {
        match nix::unistd::Group::from_name(group) {
            Ok(None) => {}
            Ok(Some(found)) => {
                let members = found.mem;
                report(
                    members.is_empty(),
                    "privileged group",
                    if members.is_empty() {
                        format!("{group}: no members")
                    } else {
                        format!(
                            "{group}: {} can gain root and undo the guard; CI jobs must not run as them",
                            members.join(", ")
                        )
                    },
                );
            }
            Err(e) => report(
                false,
                "privileged group",
                format!("{group}: cannot be looked up ({e}): check its members by hand"),
            ),
        }
    }
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
