//! PostgreSQL mediation: the job connects to its database as before (no
//! password), and the gateway logs in upstream with the policy's
//! credentials, decides every statement with PostgreSQL's own parser,
//! masks sensitive result columns and logs each statement.
//!
//! * [`codec`]: framing and one file per wire message family;
//! * [`classify`]: statement classes and dangerous-form flags;
//! * [`session`]: the state machine of one mediated session;
//! * [`tracker`]: which response belongs to which request;
//! * [`upstream`]: login to the real server (SCRAM-SHA-256, md5, password);
//! * [`cancel`]: gateway-issued cancel keys mapped to backend keys;
//! * [`catalog`]: table OID → `schema.table.column` for masking.
pub mod cancel;
pub mod catalog;
pub mod classify;
pub mod codec;
pub mod session;
pub mod tracker;
pub mod upstream;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

pub use session::{SessionSummary, serve};

use crate::{
    masking::MaskingPolicy,
    policy::{Mode, PostgresTarget, SessionRules},
};

/// Classified statements kept per daemon; statement texts repeat a lot in CI.
const CLASSIFIER_CACHE: usize = 10_000;

/// State shared by every PostgreSQL session of one daemon.
pub struct PostgresShared {
    pub classifier: classify::ClassifierCache,
    pub cancel: Arc<cancel::CancelRegistry>,
    catalogs: Mutex<HashMap<Arc<str>, Arc<catalog::Catalog>>>,
}

impl Default for PostgresShared {
    fn default() -> Self {
        Self {
            classifier: classify::ClassifierCache::new(CLASSIFIER_CACHE),
            cancel: Arc::default(),
            catalogs: Mutex::default(),
        }
    }
}

impl PostgresShared {
    /// The column-name cache of one target.
    pub fn catalog(&self, target: &Arc<str>) -> Arc<catalog::Catalog> {
        let mut catalogs = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        catalogs.entry(target.clone()).or_default().clone()
    }
}

/// What one session needs from the policy, fixed when it starts.
pub struct PostgresContext {
    pub target: Arc<PostgresTarget>,
    pub rules: SessionRules,
    pub masking: Arc<MaskingPolicy>,
    pub mode: Mode,
    pub mark: u32,
    pub shared: Arc<PostgresShared>,
}
