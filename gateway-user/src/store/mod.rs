//! Where approval requests live: one JSON file each on one host, or a
//! PostgreSQL table a fleet shares. Both behind [`ApprovalStore`].
//!
//! Session recordings have their own writer (`recording/`) and fleet copy
//! (`recording::sink`); this module holds what several processes must
//! read and change: the requests and their decisions.
mod files;
mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
pub use files::FileStore;
pub use postgres::PostgresStore;
use tokio::sync::mpsc;

use crate::approvals::Request;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("approval request {0} does not exist")]
    Unknown(String),
    /// The change was refused; the message says why.
    #[error("{0}")]
    Refused(String),
    #[error("approval store: {0}")]
    Io(String),
}

/// A change to one request, applied atomically by the store.
pub type Change<'a> = &'a (dyn Fn(&mut Request) -> Result<(), String> + Send + Sync);

#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// Adds a new request; its id must be unused.
    async fn create(&self, request: &Request) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Request>, StoreError>;
    /// Pending requests, or every request with `all`, oldest first.
    async fn list(&self, all: bool) -> Result<Vec<Request>, StoreError>;
    /// Reads, changes and writes one request so that no other change
    /// (from this process or another) interleaves; the stored result.
    async fn update(&self, id: &str, change: Change<'_>) -> Result<Request, StoreError>;
    /// Approved requests of `target` that still grant something.
    async fn grants(&self, target: &str) -> Result<Vec<Request>, StoreError> {
        let now = std::time::SystemTime::now();
        Ok(self
            .list(true)
            .await?
            .into_iter()
            .filter(|r| r.target == target && r.grant_is_live(now))
            .collect())
    }
    /// Removes the requests that settled (see [`Request::settled_at`])
    /// before `before`; how many.
    async fn prune(&self, before: std::time::SystemTime) -> Result<usize, StoreError>;
    /// Ids changed by other processes, when the store can tell (LISTEN);
    /// `None` when every change comes through this process.
    fn changes(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        None
    }
}

/// Opens the store `[approvals]` names.
pub async fn open(
    settings: &crate::policy::ApprovalStoreSettings,
) -> Result<Arc<dyn ApprovalStore>, StoreError> {
    match &settings.postgres {
        Some(pg) => Ok(Arc::new(PostgresStore::connect(pg).await?)),
        None => Ok(Arc::new(FileStore::open(&settings.dir)?)),
    }
}
