//! Finding the cgroup2 hierarchy and the cgroup the programs guard.
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use super::EbpfError;

/// Mount point of the cgroup2 filesystem, from `/proc/self/mountinfo`.
/// Hosts differ (`/sys/fs/cgroup` on unified systems, `.../unified` on
/// hybrid ones), so it is never assumed.
pub fn cgroup2_mount() -> Result<PathBuf, EbpfError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(EbpfError::io("/proc/self/mountinfo"))?;
    parse_mountinfo(&info).ok_or(EbpfError::NoCgroup2)
}

fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint opts [optional...] - fstype source superopts
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(pre.split_whitespace().nth(4)?)))
    })
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup the programs are attached to, opened.
#[derive(Debug)]
pub struct GuardedCgroup {
    pub path: PathBuf,
    pub file: File,
}

/// Resolves `configured` (absolute, or relative to the cgroup2 mount),
/// creating it when `create` is set.
pub fn resolve_cgroup(configured: &Path, create: bool) -> Result<GuardedCgroup, EbpfError> {
    let mount = cgroup2_mount()?;
    let path = if configured.is_absolute() {
        configured.to_path_buf()
    } else {
        mount.join(configured)
    };
    // `..` could walk out of the hierarchy; refuse it rather than normalise.
    if path.components().any(|c| c == Component::ParentDir) || !path.starts_with(&mount) {
        return Err(EbpfError::NotACgroup { path, mount });
    }
    if !path.exists() {
        if !create {
            return Err(EbpfError::CgroupMissing { path });
        }
        std::fs::create_dir_all(&path).map_err(EbpfError::io(&path))?;
    }
    if !path.join("cgroup.procs").exists() {
        return Err(EbpfError::NotACgroup { path, mount });
    }
    let file = File::open(&path).map_err(EbpfError::io(&path))?;
    Ok(GuardedCgroup { path, file })
}

/// The cgroup this process runs in.
#[derive(Debug)]
pub struct OwnCgroup {
    /// Its directory under the cgroup2 mount.
    pub path: PathBuf,
    /// What `bpf_get_current_cgroup_id` returns: the directory's inode
    /// number.
    pub id: u64,
    /// The other processes in it, as `cgroup.procs` lists them.
    pub others: Vec<String>,
}

/// The cgroup this process runs in, with its id and neighbours.
///
/// The path is checked by finding this process in its `cgroup.procs`: a
/// cgroup namespace or a mount of another namespace's hierarchy would
/// otherwise name a different cgroup, and exempting that one could exempt
/// a job.
pub fn own_cgroup() -> Result<OwnCgroup, EbpfError> {
    let mount = cgroup2_mount()?;
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| EbpfError::OwnCgroup(format!("reading /proc/self/cgroup: {e}")))?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| EbpfError::OwnCgroup("/proc/self/cgroup names no cgroup2 cgroup".into()))?;
    let path = mount.join(relative.trim_start_matches('/'));
    let procs = path.join("cgroup.procs");
    let listed = std::fs::read_to_string(&procs)
        .map_err(|e| EbpfError::OwnCgroup(format!("reading {}: {e}", procs.display())))?;
    let pid = std::process::id().to_string();
    let (me, others): (Vec<&str>, Vec<&str>) = listed.lines().partition(|l| *l == pid);
    if me.is_empty() {
        return Err(EbpfError::OwnCgroup(format!(
            "this process (pid {pid}) is not listed in {}: is the cgroup2 mount at {} from another cgroup namespace?",
            procs.display(),
            mount.display()
        )));
    }
    let id = std::fs::metadata(&path)
        .map_err(|e| EbpfError::OwnCgroup(format!("{}: {e}", path.display())))?
        .ino();
    Ok(OwnCgroup {
        path,
        id,
        others: others.into_iter().map(str::to_owned).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_is_where_this_process_is() {
        let Ok(mount) = cgroup2_mount() else {
            return; // no cgroup2 here: nothing to find
        };
        let own = own_cgroup().expect("own cgroup");
        assert!(own.path.starts_with(&mount), "{}", own.path.display());
        assert_eq!(std::fs::metadata(&own.path).unwrap().ino(), own.id);
        let me = std::process::id().to_string();
        assert!(!own.others.contains(&me), "{:?}", own.others);
    }

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let info = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,relatime shared:5 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            parse_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(
            parse_mountinfo("27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_spaces() {
        let info = "26 25 0:24 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(info), Some(PathBuf::from("/mnt/my cg")));
    }
}
