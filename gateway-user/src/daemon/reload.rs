//! Policy reload: a new policy replaces the old one only if it is valid.
use std::path::Path;

use tracing::{error, info, warn};

use super::Shared;
use crate::policy::Policy;

/// Reloads from `config`. An invalid file keeps the running policy and says
/// why; settings that need a restart (port, instance, mark, cgroup) are
/// reported and keep their running values.
pub(crate) fn reload(shared: &Shared, config: &Path) {
    match Policy::load(config) {
        Ok(policy) => {
            let new = policy.daemon();
            let old = &shared.daemon;
            if new.instance != old.instance
                || new.listen_port != old.listen_port
                || new.dns_port != old.dns_port
                || new.udp_port != old.udp_port
                || new.exempt_mark != old.exempt_mark
                || new.metrics_listen != old.metrics_listen
            {
                warn!(
                    "[daemon] instance, ports, exempt_mark and metrics_listen changes need a restart; running with instance={} listen_port={} dns_port={} udp_port={} metrics_listen={} until then",
                    old.instance,
                    old.listen_port,
                    old.dns_port,
                    old.udp_port,
                    old.metrics_listen
                        .map_or_else(|| "off".to_owned(), |a| a.to_string())
                );
            }
            info!(policy = %policy.summary(), mode = %policy.daemon().mode, issuers = policy.issuers().len(), "policy reloaded");
            crate::admin::metrics::policy_reload(true);
            // JWKS files are re-read with the policy: rotated keys apply now.
            shared.jobs.reload(
                policy.issuers().to_vec(),
                policy.runner_uids().to_vec(),
                policy.max_job(),
            );
            // The kernel's set follows the policy; if it cannot be written
            // the old set stays, which refuses what the new policy newly
            // allows but never lets through what it denies.
            let attached = &shared.attached;
            for (table, entries) in [
                (&attached.reach, policy.reach()),
                (&attached.udp_reach, policy.udp_reach()),
            ] {
                let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = table.sync(&entries) {
                    error!(map = table.name(), error = %e, "could not update the kernel's reachable destinations; new allowances may be refused in the kernel until the next reload");
                }
            }
            shared.policy.store(std::sync::Arc::new(policy));
            // After the store: a session starting in between would otherwise
            // fill a fresh catalog under the old policy's upstream.
            shared.postgres.policy_reloaded();
        }
        Err(errors) => {
            error!(errors = %errors, "policy reload failed; keeping the previous policy");
            crate::admin::metrics::policy_reload(false);
        }
    }
}
