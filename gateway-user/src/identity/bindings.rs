//! Which cgroup runs which job: token claims bound to a cgroup id until `job end` or `[identity] max_job` after binding.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use super::{
    JobIdentity,
    state::{SavedJob, Spent, StateError, StateFile},
};

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

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("this token was already bound ({0}): a token binds once")]
    Replayed(String),
    #[error("cgroup {cgroup} is already bound to {job}: end that job first (chokepoint job end)")]
    Busy { cgroup: String, job: String },
    #[error("no job is bound to cgroup {0}")]
    NotBound(String),
    /// Nothing changed: a binding the next start would forget (or a spent
    /// token it would take again) is not made.
    #[error("{0}; nothing changed")]
    State(#[from] StateError),
    #[error(
        "the gateway started with no [[identity.issuer]], so it keeps no job state: restart it so bindings are kept in {0}"
    )]
    NoState(String),
}

/// The bindings of one gateway; reads (one per connection) take a read lock.
#[derive(Debug, Default)]
pub struct Bindings {
    inner: RwLock<Inner>,
    /// Where changes are saved. Held by `bind` and `end` from reading the
    /// bindings to replacing them, across the state file's fsync; the
    /// read lock connections take is held only for the swap, so they
    /// never wait on the disk.
    changing: Mutex<Store>,
}

#[derive(Debug, Default)]
enum Store {
    /// Tests.
    #[default]
    Memory,
    /// A gateway that started with no issuer (so no token could bind)
    /// leaves the file alone; a reload that adds one cannot bind before a
    /// restart opens it.
    Unopened(String),
    File(StateFile),
}

#[derive(Debug, Default, Clone)]
struct Inner {
    by_cgroup: HashMap<u64, Binding>,
    /// Replay keys of every token bound, until it expires: where it was
    /// bound, for the error.
    used: HashMap<String, (String, SystemTime)>,
}

impl Bindings {
    /// The bindings `state` kept from the last run, saved there from now
    /// on. `same_cgroup(path, id)` says whether a cgroup still has the id
    /// it was bound under. Returns what was dropped, and why, for the log.
    pub fn open(
        state: StateFile,
        now: SystemTime,
        same_cgroup: impl Fn(&str, u64) -> bool,
    ) -> Result<(Bindings, Vec<String>), StateError> {
        let restored = state.restore(now, same_cgroup)?;
        let mut inner = Inner::default();
        for s in restored.spent {
            inner.used.insert(s.key, (s.bound, s.expires));
        }
        for saved in restored.jobs {
            let job = saved.job();
            inner
                .used
                .entry(job.replay_key.clone())
                .or_insert_with(|| (format!("to cgroup {}", saved.cgroup), job.expires));
            inner.by_cgroup.insert(
                saved.cgroup_id,
                Binding {
                    cgroup_id: saved.cgroup_id,
                    cgroup: saved.cgroup,
                    job: Arc::new(job),
                    bound_at: saved.bound_at,
                    until: saved.until,
                },
            );
        }
        let bindings = Bindings {
            inner: RwLock::new(inner),
            changing: Mutex::new(Store::File(state)),
        };
        Ok((bindings, restored.dropped))
    }

    /// No bindings, and no state file opened: every bind is refused,
    /// naming `path` (where a restart would keep them).
    pub fn unopened(path: &std::path::Path) -> Bindings {
        Bindings {
            inner: RwLock::default(),
            changing: Mutex::new(Store::Unopened(path.display().to_string())),
        }
    }

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
        let store = self.changing.lock().expect("bindings change lock");
        if let Store::Unopened(path) = &*store {
            return Err(BindError::NoState(path.clone()));
        }
        let mut next = self.inner.read().expect("bindings lock").clone();
        next.used.retain(|_, (_, exp)| *exp > now);
        next.by_cgroup.retain(|_, b| b.until > now);
        if let Some((where_, _)) = next.used.get(&job.replay_key) {
            return Err(BindError::Replayed(where_.clone()));
        }
        if let Some(b) = next.by_cgroup.get(&cgroup_id) {
            return Err(BindError::Busy {
                cgroup: cgroup.to_owned(),
                job: b.job.describe(),
            });
        }
        let at = humantime::format_rfc3339_seconds(now);
        next.used.insert(
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
        next.by_cgroup.insert(cgroup_id, binding.clone());
        save(&store, &next)?;
        *self.inner.write().expect("bindings lock") = next;
        Ok(binding)
    }

    /// Ends the job of a cgroup: its new connections are unidentified.
    pub fn end(&self, cgroup_id: u64, cgroup: &str) -> Result<Binding, BindError> {
        let store = self.changing.lock().expect("bindings change lock");
        let mut next = self.inner.read().expect("bindings lock").clone();
        let ended = next
            .by_cgroup
            .remove(&cgroup_id)
            .ok_or_else(|| BindError::NotBound(cgroup.to_owned()))?;
        save(&store, &next)?;
        *self.inner.write().expect("bindings lock") = next;
        Ok(ended)
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

/// Writes `inner` to the state file, if there is one.
fn save(store: &Store, inner: &Inner) -> Result<(), StateError> {
    let Store::File(state) = store else {
        return Ok(());
    };
    let jobs = inner
        .by_cgroup
        .values()
        .map(|b| SavedJob {
            cgroup_id: b.cgroup_id,
            cgroup: b.cgroup.clone(),
            issuer: b.job.issuer.clone(),
            subject: b.job.subject.clone(),
            claims: b.job.claims.clone(),
            expires: b.job.expires,
            replay_key: b.job.replay_key.clone(),
            bound_at: b.bound_at,
            until: b.until,
        })
        .collect();
    let spent = inner
        .used
        .iter()
        .map(|(key, (bound, expires))| Spent {
            key: key.clone(),
            bound: bound.clone(),
            expires: *expires,
        })
        .collect();
    state.save(jobs, spent)
}
