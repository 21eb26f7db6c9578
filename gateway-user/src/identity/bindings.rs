//! Which cgroup runs which job: token claims bound to a cgroup id until `job end` or `[identity] max_job` after binding.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use super::JobIdentity;

/// One bound job.
#[derive(Debug, Clone)]
pub struct Binding {
    pub cgroup_id: u64,
    /// The cgroup's path under the cgroup2 mount, e.g. `/actions_job/1234`.
    pub cgroup: String,
    pub job: Arc<JobIdentity>,
    pub bound_at: SystemTime,
    /// When it ends if `job end` never comes.
    pub until: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("this token was already bound ({0}): a token binds once")]
    Replayed(String),
    #[error("cgroup {cgroup} is already bound to {job}: end that job first (chokepoint job end)")]
    Busy { cgroup: String, job: String },
    #[error("no job is bound to cgroup {0}")]
    NotBound(String),
}

/// The bindings of one gateway; reads (one per connection) take a read lock.
#[derive(Debug, Default)]
pub struct Bindings {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_cgroup: HashMap<u64, Binding>,
    /// Replay keys of every token bound since start, until it expires:
    /// where it was bound, for the error.
    used: HashMap<String, (String, SystemTime)>,
}

impl Bindings {
    /// Binds `job` to a cgroup; refused for a token seen before or a
    /// cgroup that runs another live job.
    pub fn bind(
        &self,
        cgroup_id: u64,
        cgroup: &str,
        job: JobIdentity,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<Binding, BindError> {
        let mut inner = self.inner.write().expect("bindings lock");
        inner.used.retain(|_, (_, exp)| *exp > now);
        if let Some((where_, _)) = inner.used.get(&job.replay_key) {
            return Err(BindError::Replayed(where_.clone()));
        }
        if let Some(b) = inner.by_cgroup.get(&cgroup_id)
            && b.until > now
        {
            return Err(BindError::Busy {
                cgroup: cgroup.to_owned(),
                job: b.job.describe(),
            });
        }
        let at = humantime::format_rfc3339_seconds(now);
        inner.used.insert(
            job.replay_key.clone(),
            (format!("to cgroup {cgroup} at {at}"), job.expires),
        );
        let binding = Binding {
            cgroup_id,
            cgroup: cgroup.to_owned(),
            job: Arc::new(job),
            bound_at: now,
            until,
        };
        inner.by_cgroup.insert(cgroup_id, binding.clone());
        Ok(binding)
    }

    /// Ends the job of a cgroup: its new connections are unidentified.
    pub fn end(&self, cgroup_id: u64, cgroup: &str) -> Result<Binding, BindError> {
        self.inner
            .write()
            .expect("bindings lock")
            .by_cgroup
            .remove(&cgroup_id)
            .ok_or_else(|| BindError::NotBound(cgroup.to_owned()))
    }

    /// The live job of a cgroup; `None` when unbound or past `until`.
    pub fn job(&self, cgroup_id: u64, now: SystemTime) -> Option<Arc<JobIdentity>> {
        let inner = self.inner.read().expect("bindings lock");
        let b = inner.by_cgroup.get(&cgroup_id)?;
        (b.until > now).then(|| b.job.clone())
    }

    pub fn list(&self) -> Vec<Binding> {
        let mut all: Vec<Binding> = self
            .inner
            .read()
            .expect("bindings lock")
            .by_cgroup
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        all
    }
}
