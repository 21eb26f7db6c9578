//! Private cgroup2 cgroups for tests: created per test, holding only the test's own children, removed on drop.
use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Mount point of the cgroup2 hierarchy, read from `/proc/self/mountinfo`
/// (hybrid hosts mount it at `/sys/fs/cgroup/unified`, unified ones at
/// `/sys/fs/cgroup`; neither is assumed).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_mountinfo(&info)
        .context("no cgroup2 filesystem is mounted (fstype cgroup2 in /proc/self/mountinfo)")
}

fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape_octal(
            pre.split_whitespace().nth(4)?,
        )))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(v) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
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

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A child cgroup of the cgroup2 root that exists for one test.
///
/// Only processes spawned through [`TestCgroup::command`] (and their
/// descendants) ever enter it. Dropping it SIGKILLs exactly the pids listed
/// in its `cgroup.procs` (ours by construction), waits until it is empty and
/// removes it, also when the test panics.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    procs: CString,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/cp-test-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Result<Self> {
        let mount = cgroup2_mount()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = mount.join(format!("cp-test-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .context("cgroup path contains a NUL byte")?;
        Ok(Self { path, procs })
    }

    /// A cgroup inside this one (guarded by whatever guards this one):
    /// drop it before its parent.
    pub fn child(&self, name: &str) -> Result<Self> {
        let path = self.path.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .context("cgroup path contains a NUL byte")?;
        Ok(Self { path, procs })
    }

    /// Absolute path of the cgroup directory (what `[guard] cgroup` names).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the
    /// inode number of the cgroup2 directory.
    pub fn id(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)
            .with_context(|| format!("stat {}", self.path.display()))?
            .ino())
    }

    /// A command whose process joins this cgroup before it executes
    /// `program`, so its very first instruction is already guarded.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_inner(program, None)
    }

    /// Like [`command`](Self::command), then drops to `uid`/`gid` (no
    /// supplementary groups). `Command::uid` cannot be used: std switches
    /// user before running `pre_exec` hooks, and an unprivileged process may
    /// not write the root-owned `cgroup.procs`.
    pub fn command_as(&self, program: impl AsRef<std::ffi::OsStr>, uid: u32, gid: u32) -> Command {
        self.command_inner(program, Some((uid, gid)))
    }

    fn command_inner(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        user: Option<(u32, u32)>,
    ) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.procs.clone();
        // SAFETY: the hook runs between fork and exec, so it only calls
        // async-signal-safe functions (open, write, close, setgroups, setgid,
        // setuid) on memory prepared before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroup(&procs)?;
                if let Some((uid, gid)) = user {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(gid))?;
                    check(libc::setuid(uid))?;
                }
                Ok(())
            });
        }
        cmd
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let text = std::fs::read_to_string(self.path.join("cgroup.procs"))
            .with_context(|| format!("reading {}/cgroup.procs", self.path.display()))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn empty_and_remove(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("processes {pids:?} did not leave {}", self.path.display());
            }
            for pid in pids {
                // Only pids listed in this cgroup: every one was spawned by
                // this test (or is a child of such a process).
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // rmdir can briefly fail with EBUSY while exiting tasks are reaped.
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("rmdir {}", self.path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.empty_and_remove() {
            eprintln!("warning: cleaning up test cgroup: {e:#}");
        }
    }
}

/// Makes `cmd`'s process join the cgroup of `procs` (its `cgroup.procs`)
/// before it executes.
pub(crate) fn enter_before_exec(cmd: &mut Command, procs: CString) {
    // SAFETY: as in `TestCgroup::command`: only open, write and close on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || join_cgroup(&procs));
    }
}

/// Writes "0" (meaning "the writing process") to `cgroup.procs`.
fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: open/write/close with a valid NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(err);
        }
    }
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn none_without_cgroup2() {
        assert_eq!(
            parse_mountinfo("33 31 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
    }

    #[test]
    fn unescapes_mount_point() {
        let info = "41 31 0:38 / /mnt/c\\040g rw - cgroup2 none rw\n";
        assert_eq!(parse_mountinfo(info), Some(PathBuf::from("/mnt/c g")));
    }
}
