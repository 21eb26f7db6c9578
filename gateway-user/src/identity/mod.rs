//! Job identity: the CI provider's OIDC ID token, validated and bound to
//! the cgroup the job runs in, so policy can speak of repositories,
//! branches and environments instead of uids.
//!
//! A runner hook calls `chokepoint job begin --token-file …` when a job
//! starts; the gateway validates the token ([`token::validate`]) and binds
//! its claims to the caller's cgroup ([`Bindings`]); every connection from
//! that cgroup then carries them ([`Jobs::job_of`]) until `chokepoint job
//! end` or the token's expiry. Processes in no bound cgroup are
//! `unidentified`.
//!
//! ```no_run
//! # fn demo(jobs: &chokepoint::identity::Jobs, token: &str) -> Result<(), String> {
//! let binding = jobs.begin(0, None, token, Some("ci/job-42"))?;
//! println!("bound {} to {}", binding.job.describe(), binding.cgroup);
//! # Ok(()) }
//! ```
mod bindings;
mod state;
pub mod token;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
pub use bindings::{BindError, Binding, Bindings};
use serde::{Deserialize, Serialize};
pub use state::{StateError, StateFile};
pub use token::{Issuer, TokenError};

/// What a validated token says about the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentity {
    /// The configured issuer's name, e.g. `github`.
    pub issuer: String,
    /// The `sub` claim, e.g. `repo:acme/app:ref:refs/heads/main`.
    pub subject: String,
    /// Every scalar claim as text (`repository`, `ref`, `environment`…).
    pub claims: BTreeMap<String, String>,
    /// When validation stops accepting the token (`exp` plus the issuer's
    /// leeway): until then a second bind of it must be refused.
    #[serde(skip, default = "epoch")]
    pub expires: SystemTime,
    /// `jti`, or the run/pipeline and job ids: what makes a token single-use.
    #[serde(skip)]
    pub replay_key: String,
}

fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

impl JobIdentity {
    /// `github:repo:acme/app:ref:refs/heads/main`, for logs and requests.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.issuer, self.subject)
    }
}

/// The identity of a process in no bound cgroup.
pub const UNIDENTIFIED: &str = "unidentified";

/// The gateway's job bindings and what validates them.
pub struct Jobs {
    issuers: ArcSwap<Vec<Issuer>>,
    /// Uids besides root that may bind and end jobs.
    runners: ArcSwap<Vec<u32>>,
    /// How long a binding lasts without `job end`.
    max_job: ArcSwap<Duration>,
    pub bindings: Bindings,
    cgroup_root: Option<PathBuf>,
}

impl Jobs {
    pub fn new(
        issuers: Vec<Issuer>,
        runners: Vec<u32>,
        max_job: Duration,
        cgroup_root: Option<PathBuf>,
        bindings: Bindings,
    ) -> Jobs {
        Jobs {
            issuers: ArcSwap::from_pointee(issuers),
            runners: ArcSwap::from_pointee(runners),
            max_job: ArcSwap::from_pointee(max_job),
            bindings,
            cgroup_root,
        }
    }

    /// New issuers (and their re-read JWKS files) after a reload; bound
    /// jobs stay bound, for as long as they were bound.
    pub fn reload(&self, issuers: Vec<Issuer>, runners: Vec<u32>, max_job: Duration) {
        self.issuers.store(Arc::new(issuers));
        self.runners.store(Arc::new(runners));
        self.max_job.store(Arc::new(max_job));
    }

    fn authorize(&self, uid: u32) -> Result<(), String> {
        if uid == 0 || self.runners.load().contains(&uid) {
            Ok(())
        } else {
            Err(format!(
                "uid {uid} may not bind or end jobs: only root and [identity] runner_users may"
            ))
        }
    }

    /// `chokepoint job begin`: validates `token` and binds it to `cgroup`
    /// (default: the caller's own cgroup).
    pub fn begin(
        &self,
        uid: u32,
        pid: Option<u32>,
        token: &str,
        cgroup: Option<&str>,
    ) -> Result<Binding, String> {
        self.authorize(uid)?;
        let (id, path) = self.resolve(cgroup, pid)?;
        within_own(uid, pid, &path)?;
        let now = SystemTime::now();
        let job = token::validate(&self.issuers.load(), token, now)
            .map_err(|e| format!("token refused: {e}"))?;
        // The token proves who the job is when it starts; the binding
        // lasts until `job end`, or max_job if the end hook never runs,
        // not until the token's exp (minutes, for GitHub's).
        let until = now + **self.max_job.load();
        self.bindings
            .bind(id, &path, job, now, until)
            .map_err(|e| e.to_string())
    }

    /// `chokepoint job end`.
    pub fn end(&self, uid: u32, pid: Option<u32>, cgroup: Option<&str>) -> Result<Binding, String> {
        self.authorize(uid)?;
        let (id, path) = self.resolve(cgroup, pid)?;
        within_own(uid, pid, &path)?;
        self.bindings.end(id, &path).map_err(|e| e.to_string())
    }

    /// The job a connection's cgroup runs, if bound and unexpired.
    pub fn job_of(&self, cgroup_id: u64) -> Option<Arc<JobIdentity>> {
        self.bindings.job(cgroup_id, SystemTime::now())
    }

    /// A cgroup's id (its inode in cgroupfs, as `bpf_get_current_cgroup_id`
    /// reports it) and path: `cgroup` relative to the cgroup2 mount or
    /// absolute under it, or the process `pid`'s own.
    fn resolve(&self, cgroup: Option<&str>, pid: Option<u32>) -> Result<(u64, String), String> {
        let root = self
            .cgroup_root
            .clone()
            .ok_or("no cgroup2 mount on this host")?;
        let relative = match cgroup {
            Some(p) => {
                let path = Path::new(p);
                match path.strip_prefix(&root) {
                    Ok(rel) => format!("/{}", rel.display()),
                    Err(_) => format!("/{}", p.trim_start_matches('/')),
                }
            }
            None => {
                let pid =
                    pid.ok_or("the caller's pid is unknown: name the job's cgroup with --cgroup")?;
                own_cgroup(pid)?
            }
        };
        if relative.split('/').any(|c| c == "..") {
            return Err(format!("cgroup {relative:?} may not contain \"..\""));
        }
        // One spelling per cgroup: `/.`, `//a` or `/a/./` would otherwise
        // slip past the root check below and the runner-scope check.
        let parts: Vec<&str> = relative
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let relative = format!("/{}", parts.join("/"));
        let full = root.join(relative.trim_start_matches('/'));
        let meta =
            std::fs::metadata(&full).map_err(|e| format!("cgroup {} : {e}", full.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a cgroup directory", full.display()));
        }
        if relative == "/" {
            return Err(
                "the root cgroup holds every process of the host: bind a job's own cgroup"
                    .to_owned(),
            );
        }
        Ok((std::os::unix::fs::MetadataExt::ino(&meta), relative))
    }
}

/// Whether the cgroup at `path` (under the cgroup2 mount `root`) still
/// has the id it was bound under: not removed, nor removed and made again.
pub fn cgroup_has_id(root: &Path, path: &str, id: u64) -> bool {
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::ino(&m) == id)
}

/// A runner user (root aside) binds and ends jobs only in its own cgroup
/// and below: its own runner's jobs, never another runner's on the same
/// host, whose job would then carry this caller's identity.
fn within_own(uid: u32, pid: Option<u32>, path: &str) -> Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    let pid = pid.ok_or("the caller's pid is unknown, so its cgroup cannot be checked")?;
    scope_check(uid, &own_cgroup(pid)?, path)
}

fn scope_check(uid: u32, own: &str, path: &str) -> Result<(), String> {
    if is_within(own, path) {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} may bind or end jobs only in its own cgroup {own} and below, not {path}"
        ))
    }
}

/// `path` is `own` or a cgroup below it (paths as `/proc/<pid>/cgroup`
/// writes them).
fn is_within(own: &str, path: &str) -> bool {
    let own = own.trim_end_matches('/');
    let path = path.trim_end_matches('/');
    path == own
        || path
            .strip_prefix(own)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The cgroup2 path of a process, from `/proc/<pid>/cgroup` (`0::/path`).
fn own_cgroup(pid: u32) -> Result<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read the caller's cgroup (/proc/{pid}/cgroup): {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| format!("process {pid} is in no cgroup2 cgroup"))
}

#[cfg(test)]
mod tests;
