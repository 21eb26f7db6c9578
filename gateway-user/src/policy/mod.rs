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
//! });
//! if decision.verdict == Verdict::Deny {
//!     println!("denied by {}", decision.rule_name());
//! }
//! # Ok::<(), chokepoint::policy::PolicyErrors>(())
//! ```
mod compile;
mod error;
mod eval;
mod explain;
mod load;
mod model;
mod settings;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{Diagnostic, PolicyErrors};
pub use eval::{DEFAULT_DENY, Decision, FlowFacts, Verdict};
pub use explain::{Explanation, RuleOutcome, RuleTrace};
pub use settings::{DaemonSettings, GuardSettings, Mode};

use compile::{Compiled, UserLookup};

/// A loaded, valid policy. Cheap to share: `Send + Sync`, immutable; a
/// reload builds a new one.
#[derive(Debug)]
pub struct Policy {
    daemon: DaemonSettings,
    guard: Option<GuardSettings>,
    sources: Vec<PathBuf>,
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
        let (sources, loaded, mut report) = load::load(paths);
        let daemon = settings::daemon(loaded.daemon.as_ref(), &mut report);
        let guard = settings::guard(loaded.guard, &mut report);
        let compiled = compile::compile(loaded.targets, loaded.rules, &sources, &mut report, users);
        report.finish(&sources)?;
        Ok(Policy {
            daemon,
            guard,
            sources: sources.into_iter().map(|s| s.path).collect(),
            compiled,
        })
    }

    pub fn daemon(&self) -> &DaemonSettings {
        &self.daemon
    }

    /// `None` when no file has a `[guard]` section (policy-only files).
    pub fn guard(&self) -> Option<&GuardSettings> {
        self.guard.as_ref()
    }

    /// Every file that was read, in load order.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Decides on one flow. Pure: no I/O, and no allocation beyond
    /// reference-count increments for the names in the decision.
    pub fn evaluate(&self, flow: &FlowFacts<'_>) -> Decision {
        eval::evaluate(&self.compiled, flow)
    }

    /// Every rule's outcome for one flow and why, with the same decision as
    /// [`Policy::evaluate`].
    pub fn explain(&self, flow: &FlowFacts<'_>) -> Explanation {
        explain::explain(&self.compiled, self.daemon.mode, flow)
    }

    /// One line for logs and `policy check`: "3 targets, 5 rules from 2 files".
    pub fn summary(&self) -> String {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {} from {}",
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
