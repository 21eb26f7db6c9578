//! Policy v0: TOML files loaded with precise errors, and the pure decision on a flow.
//!
//! A daemon file (`/etc/chokepoint/chokepoint.toml`) may hold everything or
//! `include` policy files:
//!
//! ```toml
//! [daemon]
//! instance = "demo"
//! include = ["policy.d/*.toml"]
//!
//! [guard]
//! cgroup = "chokepoint-demo"
//!
//! [[target]]
//! name = "echo"
//! addresses = ["127.0.0.2", "::1"]
//! ports = [7000, "7100-7200"]
//!
//! [[rule]]
//! name = "builds-reach-echo"
//! action = "allow"
//! targets = ["echo"]
//! users = ["runner"]
//! processes = ["curl", "python3*"]
//! ```
//!
//! Loading reports every problem it can find, each at file:line:col, and
//! never panics on a bad file. Evaluation is deny-overrides: any matching
//! deny rule denies, else any matching allow rule allows, else the flow is
//! denied by default; the verdict does not depend on file or rule order.
//!
//! A target with `protocol = "postgres"` is mediated: its `[target.postgres]`
//! says how to reach the database and where each role's password is, the
//! allow rules' `[rule.postgres]` say which roles and statements a flow may
//! use ([`Policy::session_rules`]), and `[[masking]]` entries say which
//! result values are masked ([`Policy::masking_for`]):
//!
//! ```toml
//! [[target]]
//! name = "orders-db"
//! addresses = ["127.0.0.3"]
//! ports = [5432]
//! protocol = "postgres"
//!
//! [target.postgres]
//! tls = "disable"
//! [target.postgres.credentials.app_ro]
//! password_file = "/etc/chokepoint/secrets/orders-app_ro"
//!
//! [[rule]]
//! name = "ci-reads-orders"
//! action = "allow"
//! targets = ["orders-db"]
//! [rule.postgres]
//! roles = ["app_ro"]
//! allow = ["read", "transaction"]
//! deny = ["dangerous_function"]
//!
//! [[masking]]
//! name = "customer-emails"
//! targets = ["orders-db"]
//! columns = ["public.customers.email"]
//! strategy = "partial"
//! ```
//!
//! ```no_run
//! # use std::path::Path;
//! use chokepoint::policy::{FlowFacts, Policy, Verdict};
//!
//! let policy = Policy::load(Path::new("/etc/chokepoint/chokepoint.toml"))?;
//! let decision = policy.evaluate(&FlowFacts {
//!     dst: "127.0.0.2:7000".parse().unwrap(),
//!     pid: 4242,
//!     uid: 1000,
//!     gid: 1000,
//!     comm: "curl",
//!     claims: None,
//!     names: &[],
//!     udp: false,
//! });
//! if decision.verdict == Verdict::Deny {
//!     println!("denied by {}", decision.rule_name());
//! }
//! # Ok::<(), chokepoint::policy::PolicyErrors>(())
//! ```
mod approval;
mod compile;
mod error;
mod eval;
mod explain;
mod identity_config;
mod load;
mod masking_config;
mod model;
mod postgres;
#[cfg(test)]
mod postgres_tests;
mod reach;
mod secret_file;
mod session;
mod settings;
mod statement_kinds;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

pub use approval::{
    ApprovalRule, ApprovalStoreSettings, Approver, DEFAULT_TIMEOUT, Webhook, check_url,
    duration as parse_duration,
};
pub use error::{Diagnostic, PolicyErrors};
pub use eval::{
    COMM_MAX, Claims, DEFAULT_DENY, Decision, FlowFacts, NameDecision, Protocol, Verdict,
    as_kernel_keeps,
};
pub use explain::{Explanation, RuleOutcome, RuleTrace};
pub use postgres::{Credential, DEFAULT_MAX_MESSAGE_BYTES, PostgresTarget, UpstreamTls};
pub use reach::ReachEntry;
pub use session::{SessionRules, StatementDecision, StatementVerdict};
pub use settings::{
    CopyOutMasked, DEFAULT_ADMIN_SOCKET, DaemonSettings, DeniedAnswer, DnsSettings, GuardSettings,
    Mode, RecordingSettings,
};

use crate::masking::MaskingPolicy;
use compile::{Compiled, Entries, UserLookup};

/// A loaded, valid policy. Cheap to share: `Send + Sync`, immutable; a
/// reload builds a new one.
#[derive(Debug)]
pub struct Policy {
    daemon: DaemonSettings,
    guard: Option<GuardSettings>,
    recording: RecordingSettings,
    approvals: ApprovalStoreSettings,
    issuers: Vec<crate::identity::Issuer>,
    runner_uids: Vec<u32>,
    max_job: std::time::Duration,
    identity_state: PathBuf,
    dns: Option<DnsSettings>,
    sources: Vec<PathBuf>,
    include_dirs: Vec<PathBuf>,
    compiled: Compiled,
}

impl Policy {
    /// Loads a daemon configuration file and everything it includes.
    pub fn load(config: &Path) -> Result<Policy, PolicyErrors> {
        Policy::load_files(&[config.to_path_buf()])
    }

    /// Loads a set of files (each with its includes) as one policy, as
    /// `chokepoint policy check FILE...` does; without a `[daemon]` section
    /// the daemon settings are the defaults.
    pub fn load_files(paths: &[PathBuf]) -> Result<Policy, PolicyErrors> {
        Policy::load_with(paths, &system_user)
    }

    fn load_with(paths: &[PathBuf], users: UserLookup<'_>) -> Result<Policy, PolicyErrors> {
        let (sources, mut loaded, mut report) = load::load(paths);
        let include_dirs = std::mem::take(&mut loaded.include_dirs);
        let (daemon, masking_key) = settings::daemon(loaded.daemon.as_ref(), &sources, &mut report);
        let guard = settings::guard(loaded.guard, &mut report);
        let recording = settings::recording(loaded.recording.as_ref(), &sources, &mut report);
        let (approval_defaults, approvals) =
            settings::approvals(loaded.approvals, &sources, &mut report);
        let dns = settings::dns(loaded.dns.as_ref(), &daemon, &mut report);
        let issuers_named = match &loaded.identity {
            Some(i) => i.value.issuer.as_ref().is_some_and(|list| !list.is_empty()),
            // An [identity] that did not deserialize has its own error;
            // what issuers it meant to name is not known.
            None => loaded.identity_at.is_some(),
        };
        let identity_config::IdentitySettings {
            issuers,
            runner_uids,
            max_job,
            state_file: identity_state,
        } = identity_config::identity(loaded.identity.as_ref(), &sources, users, &mut report);
        let entries = Entries {
            targets: loaded.targets,
            rules: loaded.rules,
            masking: loaded.masking,
            // Named at all: an issuer with errors has its own to report.
            issuers: issuers_named,
        };
        let compiled = compile::compile(
            entries,
            &masking_key,
            &approval_defaults,
            &sources,
            &mut report,
            users,
        );
        report.finish(&sources)?;
        Ok(Policy {
            daemon,
            guard,
            recording,
            approvals,
            issuers,
            runner_uids,
            max_job,
            identity_state,
            dns,
            sources: sources.into_iter().map(|s| s.path).collect(),
            include_dirs,
            compiled,
        })
    }

    pub fn daemon(&self) -> &DaemonSettings {
        &self.daemon
    }

    pub fn recording(&self) -> &RecordingSettings {
        &self.recording
    }

    /// How long a job binding lasts without `chokepoint job end`.
    pub fn max_job(&self) -> std::time::Duration {
        self.max_job
    }

    /// `[identity] state_file`: where job bindings and spent tokens
    /// outlive a restart.
    pub fn identity_state(&self) -> &Path {
        &self.identity_state
    }

    /// The OIDC issuers whose tokens bind jobs, with their keys as read
    /// at this load.
    pub fn issuers(&self) -> &[crate::identity::Issuer] {
        &self.issuers
    }

    /// `[dns]`; `None`: jobs' DNS is not mediated (and stays denied).
    pub fn dns(&self) -> Option<&DnsSettings> {
        self.dns.as_ref()
    }

    /// Uids besides root that may bind and end jobs.
    pub fn runner_uids(&self) -> &[u32] {
        &self.runner_uids
    }

    /// Where approval requests are kept.
    pub fn approvals(&self) -> &ApprovalStoreSettings {
        &self.approvals
    }

    /// `None` when no file has a `[guard]` section (policy-only files).
    pub fn guard(&self) -> Option<&GuardSettings> {
        self.guard.as_ref()
    }

    /// Every file that was read, in load order.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// The folders the `include` globs look in, whether or not they
    /// matched a file: where a new policy file can appear.
    pub fn include_dirs(&self) -> &[PathBuf] {
        &self.include_dirs
    }

    /// Decides on one flow. Pure: no I/O, and no allocation beyond
    /// reference-count increments for the names in the decision.
    pub fn evaluate(&self, flow: &FlowFacts<'_>) -> Decision {
        eval::evaluate(&self.compiled, flow)
    }

    /// Whether the job behind `flow` may resolve `name` (its destination
    /// is not used).
    pub fn resolve(&self, flow: &FlowFacts<'_>, name: &str) -> NameDecision {
        eval::resolve(&self.compiled, flow, name)
    }

    /// Every rule's outcome for one flow and why, with the same decision as
    /// [`Policy::evaluate`].
    pub fn explain(&self, flow: &FlowFacts<'_>) -> Explanation {
        explain::explain(&self.compiled, self.daemon.mode, flow)
    }

    /// The postgres target named `name`; `None` for a tcp target or an
    /// unknown name.
    pub fn postgres_target(&self, name: &str) -> Option<&Arc<PostgresTarget>> {
        self.compiled
            .targets
            .iter()
            .find(|t| &*t.name == name)
            .and_then(|t| t.postgres.as_ref())
    }

    /// Every allow rule, in load order, that matches this flow's subject
    /// (uid, process) and lets it reach `target` (naming it, with the
    /// destination inside it, or naming `"*"`), with its `[rule.postgres]`.
    /// Deny rules are not here: a flow one of them matches never gets a
    /// session.
    pub fn session_rules(&self, flow: &FlowFacts<'_>, target: &str) -> SessionRules {
        let (ip, port) = eval::destination(flow.dst);
        let index = self
            .compiled
            .targets
            .iter()
            .position(|t| &*t.name == target);
        let reaches = |r: &compile::TargetRef| match *r {
            compile::TargetRef::Any => true,
            compile::TargetRef::Named(i) => {
                let t = &self.compiled.targets[i];
                Some(i) == index && t.dest_matches(ip, flow.names) && t.port_matches(port)
            }
        };
        let rules = self
            .compiled
            .rules
            .iter()
            .filter(|r| r.action == Verdict::Allow)
            .filter(|r| {
                r.uid_matches(flow.uid) && r.comm_matches(flow.comm) && r.claims_match(flow.claims)
            })
            .filter(|r| r.targets.iter().any(reaches))
            .map(|r| session::SessionRule {
                name: r.name.clone(),
                postgres: r.postgres.clone(),
                approval: r.approval.clone(),
            })
            .collect();
        let postgres = index.and_then(|i| self.compiled.targets[i].postgres.clone());
        SessionRules::new(Arc::from(target), postgres, rules)
    }

    /// The result masking of `target`'s sessions, built at load; an empty
    /// policy for a target without masking rules.
    pub fn masking_for(&self, target: &str) -> Arc<MaskingPolicy> {
        self.compiled.masking.for_target(target)
    }

    /// What `COPY ... TO STDOUT` does with masked columns.
    pub fn copy_out_masked(&self) -> CopyOutMasked {
        self.daemon.copy_out_masked
    }

    /// One line for logs and `policy check`: "3 targets, 5 rules from 2
    /// files" (and the masking rules, when there are some).
    pub fn summary(&self) -> String {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let masking = match self.compiled.masking.len() {
            0 => String::new(),
            n => format!(", {}", count(n, "masking rule")),
        };
        format!(
            "{}, {}{masking} from {}",
            count(self.compiled.targets.len(), "target"),
            count(self.compiled.rules.len(), "rule"),
            count(self.sources.len(), "file")
        )
    }
}

fn system_user(name: &str) -> Result<Option<u32>, String> {
    nix::unistd::User::from_name(name)
        .map(|user| user.map(|u| u.uid.as_raw()))
        .map_err(|e| e.to_string())
}
