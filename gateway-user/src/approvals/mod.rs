//! Just-in-time approval: a statement a rule holds waits here for a human.
//!
//! The session asks [`Approvals::hold`] and gets a [`Held`] handle: the
//! request is stored, its webhooks are notified, and the handle yields
//! each notification's outcome and finally the request as decided (or
//! expired). Approvers decide through the admin socket
//! ([`Approvals::decide`]); with the PostgreSQL store they may decide on
//! another gateway, whose `NOTIFY` wakes this one. Dropping the handle
//! before the end (the client went away) cancels the request.
//!
//! ```no_run
//! # async fn demo(approvals: std::sync::Arc<chokepoint::approvals::Approvals>, ask: chokepoint::approvals::Ask) {
//! use chokepoint::approvals::HeldEvent;
//! let mut held = approvals.hold(ask).await.expect("store reachable");
//! loop {
//!     match held.next().await {
//!         HeldEvent::Notified { url, error } => println!("{url}: {error:?}"),
//!         HeldEvent::Ended(request) => break println!("{}", request.state),
//!     }
//! }
//! # }
//! ```
pub mod authorize;
mod request;
pub mod webhook;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

pub use authorize::{Caller, Verdict};
pub use request::{GrantQuery, Request, Requester, State, Vote, digest, is_id, new_id};
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
    time::Instant,
};
use tracing::{info, warn};

use crate::{
    policy::{ApprovalRule, ApprovalStoreSettings},
    store::{self, ApprovalStore, StoreError},
};

/// How often a held statement re-reads its request even without a wake-up
/// (a lost NOTIFY must not leave it waiting until the timeout).
const POLL: Duration = Duration::from_secs(2);

/// How long a held statement that timed out waits for the store to mark
/// it expired before it ends anyway (refused either way).
const STORE_WAIT: Duration = Duration::from_secs(5);

/// The longest statement that may wait for approval. Approvers read it
/// whole, and every copy of it (request file, webhook body, the session's
/// frame) lives until the decision: a job must not park megabytes per
/// connection for hours.
pub const MAX_HELD_BYTES: usize = 64 * 1024;

/// Requests one job (cgroup) may have waiting at once, on this gateway.
pub const MAX_PENDING_PER_JOB: usize = 64;

/// Why a statement could not be held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("the request could not be stored: {0}")]
    Store(#[from] StoreError),
    #[error(
        "it is {bytes} bytes long, more than the {MAX_HELD_BYTES} bytes a statement may have to wait for approval"
    )]
    TooLong { bytes: usize },
    #[error(
        "this job already has {MAX_PENDING_PER_JOB} statements waiting for approval; wait for those to be decided"
    )]
    TooMany,
}

/// What the session knows about the statement it holds.
#[derive(Debug, Clone)]
pub struct Ask {
    pub who: Requester,
    pub target: String,
    pub role: String,
    pub database: String,
    /// The exact statement: its digest is taken from this text.
    pub sql: String,
    /// The statement as shown to approvers (password literals redacted).
    pub shown: String,
    pub class: String,
    pub rule: String,
    pub reason: String,
    pub approval: Arc<ApprovalRule>,
}

/// The approval service of one gateway (or of the CLI with `--store`).
pub struct Approvals {
    store: Arc<dyn ApprovalStore>,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// Requests waiting, by the cgroup of the job that sent them.
    pending: Arc<Mutex<HashMap<u64, usize>>>,
    http: reqwest::Client,
    /// `<hostname>/<instance>`: whose held statements a request belongs to.
    gateway: String,
}

impl Approvals {
    /// Opens the configured store; requests this gateway left pending when
    /// it last stopped are cancelled (their clients are gone).
    pub async fn start(
        settings: &ApprovalStoreSettings,
        instance: &str,
    ) -> Result<Arc<Approvals>, StoreError> {
        let store = store::open(settings).await?;
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        let me = Approvals::with_store(store, format!("{host}/{instance}"));
        me.cancel_orphans().await;
        Ok(me)
    }

    /// A service over an open store.
    pub fn with_store(store: Arc<dyn ApprovalStore>, gateway: String) -> Arc<Approvals> {
        let changes = store.changes();
        let me = Arc::new(Approvals {
            store,
            wakers: Mutex::new(HashMap::new()),
            pending: Arc::default(),
            http: webhook::client(),
            gateway,
        });
        if let Some(mut rx) = changes {
            let weak = Arc::downgrade(&me);
            tokio::spawn(async move {
                while let Some(id) = rx.recv().await {
                    let Some(me) = weak.upgrade() else { return };
                    me.wake(&id);
                }
            });
        }
        me
    }

    async fn cancel_orphans(&self) {
        let pending = match self.store.list(false).await {
            Ok(pending) => pending,
            Err(e) => {
                // Those requests stay pending; an approver who grants one
                // grants nothing (its statement is gone with the old run).
                tracing::warn!(
                    "requests held by this gateway before it restarted were not cancelled: {e}"
                );
                return;
            }
        };
        for r in pending.into_iter().filter(|r| r.gateway == self.gateway) {
            let _ = self
                .store
                .update(&r.id, &|r| {
                    if r.state == State::Pending {
                        r.state = State::Cancelled;
                        r.note = Some("the gateway holding it restarted".to_owned());
                    }
                    Ok(())
                })
                .await;
        }
    }

    /// `<hostname>/<instance>`: where requests of this service are held.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Removes requests settled longer than `keep` ago (`[approvals]
    /// keep`): every held statement reads the store's grants, so a store
    /// that only grows would slow every one of them; the decisions stay
    /// in the session recordings.
    pub async fn prune(&self, keep: std::time::Duration) -> Result<usize, StoreError> {
        let before = SystemTime::now()
            .checked_sub(keep)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.store.prune(before).await
    }

    /// An approved `--for` grant that covers this statement, if any: one
    /// whose votes hold up against `rule` (the rule holding it now) and
    /// `requester` (the asking job's user name) as an approval would.
    pub async fn grant(
        &self,
        query: &GrantQuery<'_>,
        rule: &ApprovalRule,
        requester: &str,
    ) -> Option<Request> {
        let now = SystemTime::now();
        match self.store.grants(query.target).await {
            Ok(grants) => grants.into_iter().filter(|r| r.grant_covers(query, now)).find(|r| {
                match authorize::check_grant(rule, requester, r) {
                    Ok(()) => true,
                    Err(why) => {
                        warn!(id = %r.id, "the store holds a grant for this statement, but {why}: not used");
                        false
                    }
                }
            }),
            Err(e) => {
                warn!(error = %e, "cannot look up approval grants; asking instead");
                None
            }
        }
    }

    /// Stores a request for `ask`, notifies its webhooks and returns the
    /// handle the session waits on.
    pub async fn hold(self: &Arc<Self>, ask: Ask) -> Result<Held, HoldError> {
        if ask.sql.len() > MAX_HELD_BYTES {
            return Err(HoldError::TooLong {
                bytes: ask.sql.len(),
            });
        }
        let slot = PendingSlot::take(&self.pending, ask.who.cgroup_id).ok_or(HoldError::TooMany)?;
        let now = SystemTime::now();
        let rule = &ask.approval;
        let request = Request {
            id: new_id(),
            state: State::Pending,
            who: ask.who,
            target: ask.target,
            role: ask.role,
            database: ask.database,
            statement: ask.shown,
            digest: digest(&ask.sql),
            class: ask.class,
            rule: ask.rule,
            reason: ask.reason,
            approvers: rule.approvers.iter().map(ToString::to_string).collect(),
            min_approvals: rule.min_approvals,
            max_grant_secs: rule.max_grant.map(|d| d.as_secs()),
            created: request::format_time(now),
            expires: request::after(now, rule.timeout),
            gateway: self.gateway.clone(),
            votes: Vec::new(),
            grant_until: None,
            note: None,
        };
        self.store.create(&request).await?;
        info!(id = %request.id, rule = %request.rule, who = %request.who.identity, statement = %request.statement, "statement held for approval");
        let waker = Arc::new(Notify::new());
        self.wakers
            .lock()
            .expect("wakers lock")
            .insert(request.id.clone(), waker.clone());
        let (tx, events) = mpsc::unbounded_channel();
        for hook in rule.notify.clone() {
            let (http, tx, request) = (self.http.clone(), tx.clone(), request.clone());
            tokio::spawn(async move {
                let error = webhook::notify(&http, &hook, &request).await.err();
                if let Some(e) = &error {
                    warn!(id = %request.id, url = %hook.url, error = %e, "approval webhook failed");
                }
                let _ = tx.send(HeldEvent::Notified {
                    url: hook.url,
                    error,
                });
            });
        }
        let deadline = Instant::now() + rule.timeout;
        let task = tokio::spawn(watch(
            self.clone(),
            request.clone(),
            deadline,
            rule.timeout,
            waker,
            tx,
        ));
        Ok(Held {
            request,
            events,
            task,
            service: self.clone(),
            ended: false,
            _waiting: crate::admin::metrics::approval_waiting(),
            _slot: slot,
        })
    }

    /// Pending requests (every request with `all`) the caller may see.
    pub async fn list(&self, caller: &Caller, all: bool) -> Result<Vec<Request>, String> {
        let requests = self.store.list(all).await.map_err(|e| e.to_string())?;
        Ok(requests
            .into_iter()
            .filter(|r| authorize::may_view(caller, r))
            .collect())
    }

    pub async fn show(&self, caller: &Caller, id: &str) -> Result<Request, String> {
        match self.store.get(id).await.map_err(|e| e.to_string())? {
            Some(r) if authorize::may_view(caller, &r) => Ok(r),
            Some(r) => Err(format!(
                "{} may not see request {id}: only root and its approvers ({}) may",
                caller.name,
                r.approvers.join(", ")
            )),
            None => Err(StoreError::Unknown(id.to_owned()).to_string()),
        }
    }

    /// Records an approver's verdict and wakes the held statement.
    pub async fn decide(
        &self,
        caller: &Caller,
        id: &str,
        verdict: &Verdict,
        digest: Option<&str>,
    ) -> Result<Request, String> {
        let now = SystemTime::now();
        let decided = self
            .store
            .update(id, &|r| authorize::vote(caller, r, verdict, digest, now))
            .await
            .map_err(|e| e.to_string())?;
        info!(id, by = %caller.name, state = %decided.state, "approval decision");
        self.wake(id);
        Ok(decided)
    }

    fn wake(&self, id: &str) {
        if let Some(w) = self.wakers.lock().expect("wakers lock").get(id) {
            w.notify_one();
        }
    }

    fn forget(&self, id: &str) {
        self.wakers.lock().expect("wakers lock").remove(id);
    }
}

/// What a held statement hears while it waits.
#[derive(Debug, Clone)]
pub enum HeldEvent {
    /// A webhook took the request (`error: None`) or did not.
    Notified { url: String, error: Option<String> },
    /// Decided, expired or cancelled: the last event.
    Ended(Box<Request>),
}

/// A statement waiting for a decision. Dropping it before
/// [`HeldEvent::Ended`] cancels the request.
pub struct Held {
    pub request: Request,
    events: mpsc::UnboundedReceiver<HeldEvent>,
    task: JoinHandle<()>,
    service: Arc<Approvals>,
    ended: bool,
    _waiting: crate::admin::metrics::Waiting,
    _slot: PendingSlot,
}

/// One of a job's [`MAX_PENDING_PER_JOB`] places, given back on drop.
struct PendingSlot {
    counts: Arc<Mutex<HashMap<u64, usize>>>,
    cgroup: u64,
}

impl PendingSlot {
    fn take(counts: &Arc<Mutex<HashMap<u64, usize>>>, cgroup: u64) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(cgroup).or_default();
        if *n >= MAX_PENDING_PER_JOB {
            return None;
        }
        *n += 1;
        Some(PendingSlot {
            counts: counts.clone(),
            cgroup,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.cgroup) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.cgroup);
            }
        }
    }
}

impl Held {
    pub fn id(&self) -> &str {
        &self.request.id
    }

    /// The next event; after `Ended`, never resolves.
    pub async fn next(&mut self) -> HeldEvent {
        if self.ended {
            return std::future::pending().await;
        }
        match self.events.recv().await {
            Some(event) => {
                if let HeldEvent::Ended(_) = event {
                    self.ended = true;
                }
                event
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
        self.service.forget(&self.request.id);
        if self.ended {
            return;
        }
        let (service, id) = (self.service.clone(), self.request.id.clone());
        // Drop cannot wait; the runtime is still up while sessions end.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = service
                    .store
                    .update(&id, &|r| {
                        if r.state == State::Pending {
                            r.state = State::Cancelled;
                            r.note = Some("the client disconnected before a decision".to_owned());
                        }
                        Ok(())
                    })
                    .await;
            });
        }
    }
}

/// Waits for the request to leave `Pending`, or expires it at the deadline.
async fn watch(
    service: Arc<Approvals>,
    mut request: Request,
    deadline: Instant,
    timeout: Duration,
    waker: Arc<Notify>,
    tx: mpsc::UnboundedSender<HeldEvent>,
) {
    let id = request.id.clone();
    loop {
        tokio::select! {
            _ = waker.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {
                let note = format!("no decision within {}", humantime::format_duration(timeout));
                let mark_expired = |r: &mut Request| {
                    if r.state == State::Pending {
                        r.state = State::Expired;
                        r.note = Some(note.clone());
                    }
                    Ok(())
                };
                let expire = service.store.update(&id, &mark_expired);
                // A store that hangs must not keep the client waiting past its timeout.
                let expired = match tokio::time::timeout(STORE_WAIT, expire).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {}", humantime::format_duration(STORE_WAIT))),
                };
                let ended = expired.unwrap_or_else(|e| {
                    // The store is unreachable: the statement still must
                    // not run, so it ends as expired here.
                    request.state = State::Expired;
                    request.note = Some(format!("{note} (and the store could not be updated: {e})"));
                    request.clone()
                });
                let _ = tx.send(HeldEvent::Ended(Box::new(ended)));
                return;
            }
        }
        // Bounded by the deadline: past it, the loop expires the request.
        let Ok(read) = tokio::time::timeout_at(deadline, service.store.get(&id)).await else {
            continue;
        };
        match read {
            Ok(Some(r)) if r.state != State::Pending => {
                let _ = tx.send(HeldEvent::Ended(Box::new(r)));
                return;
            }
            Ok(Some(r)) => request = r,
            Ok(None) => {
                request.state = State::Cancelled;
                request.note = Some("the request was removed from the store".to_owned());
                let _ = tx.send(HeldEvent::Ended(Box::new(request)));
                return;
            }
            Err(e) => warn!(id = %id, error = %e, "cannot read approval request; retrying"),
        }
    }
}

#[cfg(test)]
mod tests;
