//! Checks that fail early with a clear message instead of an opaque
//! `EPERM`/`EINVAL` from the bpf syscall.
use std::path::Path;

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use super::EbpfError;

/// Oldest kernel with everything the programs use.
const MIN_KERNEL: (u32, u32) = (5, 10);
/// Oldest kernel with LSM hooks attached per cgroup (`BPF_LSM_CGROUP`).
const MIN_LSM_CGROUP_KERNEL: (u32, u32) = (6, 0);
/// Where systemd mounts securityfs, which lists the active LSMs.
const SECURITYFS: &str = "/sys/kernel/security";

/// Root, kernel version and BTF.
pub fn preflight() -> Result<(), EbpfError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(EbpfError::NotRoot);
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(version) = parse_release(&release)
        && version < MIN_KERNEL
    {
        return Err(EbpfError::KernelTooOld {
            found: release,
            need: "5.10",
        });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(EbpfError::NoBtf);
    }
    Ok(())
}

/// Whether the kernel runs BPF LSM programs attached to a cgroup; `Err`
/// says why not and what to change. Loading and attaching them succeeds
/// either way, which is why this is asked first: where the BPF LSM is not
/// among the active LSMs, the hook would be attached and never run.
pub fn bpf_lsm() -> Result<(), String> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if parse_release(&release).is_some_and(|v| v < MIN_LSM_CGROUP_KERNEL) {
        return Err(format!(
            "kernel {release} has no LSM hooks per cgroup (Linux 6.0 or newer)"
        ));
    }
    let list = Path::new(SECURITYFS).join("lsm");
    if !list.exists() {
        // Mounted at boot by systemd; a minimal init may not have.
        let _ = mount(
            Some("securityfs"),
            SECURITYFS,
            Some("securityfs"),
            MsFlags::empty(),
            None::<&str>,
        );
    }
    let active = std::fs::read_to_string(&list)
        .map_err(|e| format!("cannot read the active LSMs from {}: {e}", list.display()))?;
    lsm_list_has_bpf(&active)
}

fn lsm_list_has_bpf(active: &str) -> Result<(), String> {
    if active.trim().split(',').any(|lsm| lsm == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "the BPF LSM is not enabled (active LSMs: {}): add `bpf` to the kernel's `lsm=` boot parameter",
            active.trim()
        ))
    }
}

/// Mounts bpffs at `root` unless one is already there.
pub fn ensure_bpffs(root: &Path) -> Result<(), EbpfError> {
    if let Ok(fs) = statfs(root)
        && fs.filesystem_type() == BPF_FS_MAGIC
    {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(EbpfError::io(root))?;
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| EbpfError::BpffsMount {
        path: root.into(),
        source: e.into(),
    })
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::{lsm_list_has_bpf, parse_release};

    #[test]
    fn the_bpf_lsm_must_be_in_the_active_list() {
        assert!(lsm_list_has_bpf("lockdown,capability,landlock,bpf\n").is_ok());
        let off = lsm_list_has_bpf("lockdown,capability,landlock,yama,apparmor").unwrap_err();
        assert!(off.contains("add `bpf` to the kernel's `lsm=`"), "{off}");
        assert!(lsm_list_has_bpf("bpfx,lockdown").is_err());
    }

    #[test]
    fn parses_distribution_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert!(parse_release("5.4.0") < Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
    }
}
