//! The bindings and spent tokens, kept in a file so that a restart (a
//! crash, an upgrade, `systemctl restart`) neither unbinds running jobs nor
//! lets a spent token bind a second time.
//!
//! The file is rewritten whole on every `job begin` and `job end` (a few
//! per job, never per connection): written beside itself, synced, then
//! renamed over, so a crash leaves the old state or the new one, never
//! half of either. Cgroup ids are inode numbers, which a reboot hands out
//! again: bindings are restored only on the boot that made them and only
//! while their cgroup still has that id; spent tokens are kept until they
//! expire, across reboots too.
use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::JobIdentity;

/// The format this build writes and reads.
const VERSION: u32 = 1;
/// Far more than any host's jobs and live tokens; a larger file is not
/// one this gateway wrote.
const MAX_BYTES: u64 = 64 << 20;

/// Where the state lives, and the boot it is read on. Held locked
/// (`<file>.lock`) while the daemon runs: two daemons writing one file
/// whole would each drop the other's bindings and spent tokens.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    boot_id: String,
    _lock: Option<Arc<Flock<fs::File>>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Saved {
    version: u32,
    /// `/proc/sys/kernel/random/boot_id` when written.
    boot_id: String,
    pub jobs: Vec<SavedJob>,
    pub spent: Vec<Spent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedJob {
    pub cgroup_id: u64,
    pub cgroup: String,
    pub issuer: String,
    pub subject: String,
    pub claims: std::collections::BTreeMap<String, String>,
    pub expires: SystemTime,
    pub replay_key: String,
    pub bound_at: SystemTime,
    pub until: SystemTime,
}

impl SavedJob {
    pub fn job(&self) -> JobIdentity {
        JobIdentity {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            claims: self.claims.clone(),
            expires: self.expires,
            replay_key: self.replay_key.clone(),
        }
    }
}

/// A token that bound once: refused again until it `expires`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Spent {
    pub key: String,
    /// Where it was bound, for the refusal.
    pub bound: String,
    pub expires: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "job state {path}: {reason}: move the file aside to start with no bound jobs (running jobs become unidentified and their tokens could bind again)"
    )]
    Unreadable { path: String, reason: String },
    #[error(
        "job state {path} is locked ({reason}): another chokepoint daemon keeps its jobs there; give each instance its own [identity] state_file"
    )]
    Locked { path: String, reason: String },
    #[error("job state {path} could not be saved: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What a restart got back, and what it dropped and why (for the log).
#[derive(Debug, Default)]
pub(super) struct Restored {
    pub jobs: Vec<SavedJob>,
    pub spent: Vec<Spent>,
    pub dropped: Vec<String>,
}

impl StateFile {
    /// The state at `path`, on this boot, locked for this process (its
    /// directory is made, 0700, if missing).
    pub fn open(path: PathBuf) -> Result<StateFile, StateError> {
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .map_err(|e| StateError::Unreadable {
                path: "/proc/sys/kernel/random/boot_id".into(),
                reason: e.to_string(),
            })?;
        let shown = path.display().to_string();
        let unreadable = |e: std::io::Error| StateError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unreadable)?;
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        // Read and write, non-blocking: a FIFO put there then opens at
        // once (instead of waiting for a reader) and is refused by name.
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(PathBuf::from(&lock))
            .map_err(unreadable)?;
        crate::regular_file::check(&file).map_err(|e| StateError::Unreadable {
            path: PathBuf::from(&lock).display().to_string(),
            reason: e.to_string(),
        })?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            StateError::Locked {
                path: shown.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(StateFile {
            path,
            boot_id,
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Unlocked, on a made-up boot: for tests that restart in-process.
    #[cfg(test)]
    pub(super) fn with_boot(path: PathBuf, boot_id: &str) -> StateFile {
        StateFile {
            path,
            boot_id: boot_id.to_owned(),
            _lock: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what the last run saved; nothing when there is no file yet.
    /// `same_cgroup(path, id)` says whether a cgroup still has that id.
    pub(super) fn restore(
        &self,
        now: SystemTime,
        same_cgroup: impl Fn(&str, u64) -> bool,
    ) -> Result<Restored, StateError> {
        let unreadable = |reason: String| StateError::Unreadable {
            path: self.path.display().to_string(),
            reason,
        };
        // A regular file only: opening a FIFO put there would wait for a
        // writer and hang the daemon's start. Bounded, and a sparse huge
        // file refused before anything is read.
        let text = match crate::regular_file::read_bounded(&self.path, MAX_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Restored::default()),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(unreadable(format!("larger than {} MiB", MAX_BYTES >> 20)));
            }
            Err(e) => return Err(unreadable(e.to_string())),
        };
        let saved: Saved =
            serde_json::from_slice(&text).map_err(|e| unreadable(format!("not job state: {e}")))?;
        if saved.version != VERSION {
            return Err(unreadable(format!(
                "format version {} (this gateway reads {VERSION})",
                saved.version
            )));
        }
        let mut restored = Restored {
            spent: saved
                .spent
                .into_iter()
                .filter(|s| s.expires > now)
                .collect(),
            ..Restored::default()
        };
        for job in saved.jobs {
            let why = if saved.boot_id != self.boot_id {
                Some("the host rebooted since it was bound")
            } else if job.until <= now {
                Some("its max_job ran out")
            } else if !same_cgroup(&job.cgroup, job.cgroup_id) {
                Some("its cgroup is gone")
            } else {
                None
            };
            match why {
                Some(why) => restored.dropped.push(format!(
                    "{}:{} in {}: {why}",
                    job.issuer, job.subject, job.cgroup
                )),
                None => restored.jobs.push(job),
            }
        }
        Ok(restored)
    }

    /// Replaces the file with `jobs` and `spent`, durably.
    pub(super) fn save(&self, jobs: Vec<SavedJob>, spent: Vec<Spent>) -> Result<(), StateError> {
        let saved = Saved {
            version: VERSION,
            boot_id: self.boot_id.clone(),
            jobs,
            spent,
        };
        let bytes = serde_json::to_vec(&saved).expect("job state serializes");
        self.replace(&bytes).map_err(|source| StateError::Write {
            path: self.path.display().to_string(),
            source,
        })
    }

    fn replace(&self, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        // Whatever a crash (or anyone) left there goes first: opening a
        // FIFO to write would wait for a reader forever.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        // The rename itself must reach the disk before `job begin` says
        // the token is spent.
        fs::File::open(dir)?.sync_all()
    }
}
