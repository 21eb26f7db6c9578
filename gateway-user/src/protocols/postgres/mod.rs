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
//! * [`catalog`]: table OID → `schema.table.column` for masking;
//! * [`search_path`]: the schemas an unqualified table name may be in;
//! * [`copy_out`]: masking the rows of `COPY … TO STDOUT`;
//! * [`tls`]: TLS towards the job (generated certificate) and the database.
pub mod cancel;
pub mod catalog;
pub mod classify;
pub mod codec;
pub mod copy_out;
pub mod search_path;
pub mod session;
pub mod tls;
pub mod tracker;
pub mod upstream;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use rustls::ClientConfig;
use tokio_rustls::TlsAcceptor;

pub use session::{SessionSummary, refuse_unstarted, serve};

use crate::{
    masking::MaskingPolicy,
    policy::{CopyOutMasked, Mode, PostgresTarget, SessionRules, UpstreamTls},
};

/// Classified statements kept per daemon; statement texts repeat a lot in CI.
const CLASSIFIER_CACHE: usize = 10_000;

/// State shared by every PostgreSQL session of one daemon.
pub struct PostgresShared {
    pub classifier: classify::ClassifierCache,
    pub cancel: Arc<cancel::CancelRegistry>,
    catalogs: Mutex<HashMap<CatalogKey, Arc<catalog::Catalog>>>,
    /// Made on the first TLS request of any job, then reused.
    client_tls: OnceLock<Result<TlsAcceptor, String>>,
    /// Per target, with the settings it was built from (a reload may change them).
    upstream_tls: Mutex<HashMap<Arc<str>, BuiltTls>>,
    /// Policy reloads so far: a running session that sees it change takes
    /// the new statement policy before its next statement.
    generation: AtomicU64,
    /// See [`Self::schema_generation`].
    schema_generation: AtomicU64,
}

/// Whose catalog: table OIDs mean something only inside one database, and
/// a role's own settings (its `search_path`) shape what a COPY's query
/// describes as.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CatalogKey {
    target: Arc<str>,
    database: String,
    role: String,
}

/// A target's TLS settings and the client config built from them.
type BuiltTls = (UpstreamTls, Arc<ClientConfig>);

impl Default for PostgresShared {
    fn default() -> Self {
        Self {
            classifier: classify::ClassifierCache::new(CLASSIFIER_CACHE),
            cancel: Arc::default(),
            catalogs: Mutex::default(),
            client_tls: OnceLock::new(),
            upstream_tls: Mutex::default(),
            generation: AtomicU64::new(0),
            schema_generation: AtomicU64::new(0),
        }
    }
}

impl PostgresShared {
    /// The column-name cache of one target's `database` as `role` sees it,
    /// shared by the sessions that log in the same way.
    pub fn catalog(&self, target: &Arc<str>, database: &str, role: &str) -> Arc<catalog::Catalog> {
        let key = CatalogKey {
            target: target.clone(),
            database: database.to_owned(),
            role: role.to_owned(),
        };
        let mut catalogs = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        catalogs.entry(key).or_default().clone()
    }

    /// A job's DDL (or code of the database's own) may have defined a
    /// function or replaced a view: every catalog of `target` and
    /// `database` forgets what it read (see
    /// [`catalog::Catalog::forget_all`]), whichever role it serves, and
    /// every session drops its plans (the generation is one for all:
    /// dropping more only costs lookups).
    pub fn schema_changed(&self, target: &str, database: &str) {
        self.schema_generation.fetch_add(1, Ordering::AcqRel);
        for (key, catalog) in self
            .catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if &*key.target == target && key.database == database {
                catalog.forget_all();
            }
        }
    }

    /// Bumped by [`Self::schema_changed`]: a session drops the layouts and
    /// reading rules it planned under an older value (found in review: a
    /// view replaced in place keeps its OID, so another session's cached
    /// layout for the same RowDescription bytes stood).
    pub fn schema_generation(&self) -> u64 {
        self.schema_generation.load(Ordering::Acquire)
    }

    /// Forgets every catalog after a policy reload: the reload may point a
    /// target at another server, and an administrator who renamed a table
    /// and its masking rule together expects the new name to count from
    /// now. Sessions already running keep the catalog they started with
    /// (it talks to the server they are connected to); its connection
    /// closes with the last of them.
    pub fn policy_reloaded(&self) {
        self.catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many reloads there have been (see [`PostgresContext::refresh`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The acceptor for jobs that ask for TLS (target `client_tls = true`).
    pub fn client_acceptor(&self) -> Result<TlsAcceptor, String> {
        self.client_tls.get_or_init(tls::generated_acceptor).clone()
    }

    /// The TLS client config of a target's upstream; `None` for plaintext.
    /// Built once per target and settings, so the CA file is read again
    /// only after a reload changes it.
    pub fn upstream_tls(
        &self,
        target: &PostgresTarget,
    ) -> Result<Option<Arc<ClientConfig>>, String> {
        let mut cache = self.upstream_tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((settings, config)) = cache.get(&target.name)
            && *settings == target.tls
        {
            return Ok(Some(config.clone()));
        }
        let Some(config) = tls::upstream_config(&target.tls)? else {
            return Ok(None);
        };
        cache.insert(target.name.clone(), (target.tls.clone(), config.clone()));
        Ok(Some(config))
    }
}

/// A running session's statement policy after a reload, for its role.
pub struct Refreshed {
    /// `Err`: the policy no longer lets this job use the session (its
    /// connection or its role); every statement is refused from now on.
    pub rules: Result<SessionRules, String>,
    pub mode: Mode,
    pub copy_out_masked: CopyOutMasked,
    /// The target's masking rules now. Results described after the
    /// reload are planned with them; rows already on their way keep the
    /// plan they were described under.
    pub masking: Arc<MaskingPolicy>,
}

/// Works out [`Refreshed`] from the current policy for a session's role.
pub type Refresh = Arc<dyn Fn(&str) -> Refreshed + Send + Sync>;

/// What one session needs from the policy when it starts. The statement
/// policy (rules, mode, `copy_out_masked`) and the masking rules follow
/// reloads through `refresh`; the target (upstream, credentials, TLS)
/// stays as the session started: its connection belongs to it.
pub struct PostgresContext {
    pub target: Arc<PostgresTarget>,
    pub rules: SessionRules,
    pub masking: Arc<MaskingPolicy>,
    pub mode: Mode,
    pub copy_out_masked: CopyOutMasked,
    pub mark: u32,
    pub shared: Arc<PostgresShared>,
    /// `None` where no approval service runs (a statement a rule holds is
    /// then denied).
    pub approvals: Option<Arc<crate::approvals::Approvals>>,
    /// The job bound to the client's cgroup, if any.
    pub job: Option<Arc<crate::identity::JobIdentity>>,
    /// `None`: the session keeps its statement policy (tests).
    pub refresh: Option<Refresh>,
    /// [`PostgresShared::generation`] read before the policy this context
    /// was made from.
    pub generation: u64,
    /// What the job's connections may hold in partly received messages.
    pub budget: crate::job_budget::JobBudget,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogs_are_per_database_and_role_and_start_over_on_reload() {
        let shared = PostgresShared::default();
        let target: Arc<str> = Arc::from("orders-db");
        let orders = shared.catalog(&target, "orders", "app_rw");
        assert!(Arc::ptr_eq(
            &orders,
            &shared.catalog(&target, "orders", "app_rw")
        ));
        assert!(!Arc::ptr_eq(
            &orders,
            &shared.catalog(&target, "staging", "app_rw")
        ));
        assert!(!Arc::ptr_eq(
            &orders,
            &shared.catalog(&target, "orders", "app_ro")
        ));
        assert!(!Arc::ptr_eq(
            &orders,
            &shared.catalog(&Arc::from("other"), "orders", "app_rw")
        ));
        shared.policy_reloaded();
        assert!(!Arc::ptr_eq(
            &orders,
            &shared.catalog(&target, "orders", "app_rw")
        ));
    }
}
