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
    use super::parse_release;

    #[test]
    fn parses_distribution_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert!(parse_release("5.4.0") < Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
    }
}
