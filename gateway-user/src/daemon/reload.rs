//! Policy reload: a new policy replaces the old one only if it is valid.
use std::path::Path;

use tracing::{error, info, warn};

use super::Shared;
use crate::policy::{
    ApprovalStoreSettings, DaemonSettings, GuardSettings, Policy, RecordingSettings,
};

/// What `run` set up from the configuration and a reload does not redo:
/// the guarded cgroup, the recorder and the approval store. (The
/// `[daemon]` ones are `Shared::daemon`.)
pub(crate) struct Started {
    pub guard: GuardSettings,
    pub recording: RecordingSettings,
    pub approvals: ApprovalStoreSettings,
    /// `[identity] state_file`: the bindings were read from there.
    pub identity_state: std::path::PathBuf,
}

/// Reloads from `config`. An invalid file keeps the running policy and says
/// why; each setting that needs a restart (ports, instance, mark, admin
/// socket, cgroup, recording, approval store) is reported by name when it
/// changed, and keeps its running value.
pub(crate) fn reload(shared: &Shared, config: &Path) {
    match Policy::load(config) {
        Ok(policy) => {
            let pending = needs_restart(&shared.daemon, &shared.started, &policy);
            for change in &pending {
                warn!("{change}");
            }
            info!(policy = %policy.summary(), mode = %policy.daemon().mode, issuers = policy.issuers().len(), settings_awaiting_restart = pending.len(), "policy reloaded");
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

/// One line per start-only setting `new` changes: which one, and what the
/// gateway keeps running with until it restarts. Found in review: only
/// the ports, instance, mark and metrics_listen were compared, so a
/// changed admin socket, cgroup, recording directory or approval store
/// was silently ignored under "policy reloaded".
fn needs_restart(daemon: &DaemonSettings, started: &Started, new: &Policy) -> Vec<String> {
    let mut out = Changes(Vec::new());
    let nd = new.daemon();
    let addr =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    let group = |g: &Option<(String, u32)>| {
        g.as_ref()
            .map_or_else(|| "none (root only)".to_owned(), |(name, _)| name.clone())
    };
    out.compare("[daemon] instance", &daemon.instance, &nd.instance);
    out.compare("[daemon] listen_port", daemon.listen_port, nd.listen_port);
    out.compare("[daemon] dns_port", daemon.dns_port, nd.dns_port);
    out.compare("[daemon] udp_port", daemon.udp_port, nd.udp_port);
    out.compare(
        "[daemon] exempt_mark",
        format_args!("{:#x}", daemon.exempt_mark),
        format_args!("{:#x}", nd.exempt_mark),
    );
    out.compare(
        "[daemon] metrics_listen",
        addr(daemon.metrics_listen),
        addr(nd.metrics_listen),
    );
    out.compare(
        "[daemon] admin_socket",
        daemon.admin_socket.display(),
        nd.admin_socket.display(),
    );
    out.compare(
        "[daemon] admin_group",
        group(&daemon.admin_group),
        group(&nd.admin_group),
    );

    let guard = &started.guard;
    match new.guard() {
        Some(ng) => {
            out.compare("[guard] cgroup", guard.cgroup.display(), ng.cgroup.display());
            out.compare("[guard] create", guard.create, ng.create);
            out.compare(
                "[guard] require_family_guard",
                guard.require_family_guard,
                ng.require_family_guard,
            );
            out.compare(
                "[guard] loopback_clients_only",
                guard.loopback_clients_only,
                ng.loopback_clients_only,
            );
        }
        None => out.0.push(format!(
            "[guard] is gone: the gateway keeps guarding {} until it restarts, and will not start again without it",
            guard.cgroup.display()
        )),
    }

    let (rec, nrec) = (&started.recording, new.recording());
    out.compare("[recording] enabled", rec.enabled, nrec.enabled);
    out.compare("[recording] dir", rec.dir.display(), nrec.dir.display());
    out.compare(
        "[recording] keys_dir",
        rec.keys_dir.display(),
        nrec.keys_dir.display(),
    );
    out.compare("[recording] result_rows", rec.result_rows, nrec.result_rows);
    let days = |d: Option<std::time::Duration>| {
        d.map_or_else(
            || "unlimited".to_owned(),
            |d| (d.as_secs() / 86_400).to_string(),
        )
    };
    out.compare(
        "[recording] max_age_days",
        days(rec.retention.max_age),
        days(nrec.retention.max_age),
    );
    let mb = |b: Option<u64>| {
        b.map_or_else(
            || "unlimited".to_owned(),
            |b| (b / (1024 * 1024)).to_string(),
        )
    };
    out.compare(
        "[recording] max_total_mb",
        mb(rec.retention.max_total_bytes),
        mb(nrec.retention.max_total_bytes),
    );

    out.compare(
        "[identity] state_file",
        started.identity_state.display(),
        new.identity_state().display(),
    );
    let (app, napp) = (&started.approvals, new.approvals());
    out.compare("[approvals] dir", app.dir.display(), napp.dir.display());
    // Named, never shown: a connection string may hold a password.
    for (name, old, new) in [
        ("[recording] postgres", &rec.sink, &nrec.sink),
        ("[approvals] postgres", &app.postgres, &napp.postgres),
    ] {
        if old != new {
            let state = |s: &Option<_>| if s.is_some() { "set" } else { "unset" };
            out.0.push(format!(
                "{name} (or its password file) changed (was {}, now {}): it takes effect at restart; the gateway keeps the store it started with until then",
                state(old),
                state(new)
            ));
        }
    }
    out.0
}

/// The lines [`needs_restart`] collects.
struct Changes(Vec<String>);

impl Changes {
    /// Adds a line when `old` and `new` read differently.
    fn compare(&mut self, name: &str, old: impl std::fmt::Display, new: impl std::fmt::Display) {
        let (old, new) = (old.to_string(), new.to_string());
        if old != new {
            self.0.push(format!(
                "{name} changed to {new}: it takes effect at restart; running with {old} until then"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(policy: &Policy) -> Started {
        Started {
            guard: policy.guard().cloned().unwrap(),
            recording: policy.recording().clone(),
            approvals: policy.approvals().clone(),
            identity_state: policy.identity_state().to_path_buf(),
        }
    }

    #[test]
    fn every_changed_start_only_setting_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chokepoint.toml");
        std::fs::write(&config, "[guard]\ncgroup = \"ci\"\n").unwrap();
        let before = Policy::load(&config).unwrap();
        let running = started(&before);
        assert_eq!(
            needs_restart(before.daemon(), &running, &before),
            Vec::<String>::new(),
            "nothing changed"
        );

        std::fs::write(
            &config,
            "[daemon]\nadmin_socket = \"/run/other/admin.sock\"\nadmin_group = \"root\"\n\
             [guard]\ncgroup = \"other\"\nrequire_family_guard = true\n\
             [recording]\ndir = \"/var/lib/other/sessions\"\nmax_total_mb = 10\n\
             [identity]\nstate_file = \"/var/lib/other/jobs.json\"\n\
             [approvals]\n\
             postgres = \"host=db.internal user=chokepoint password=hunter2 dbname=cp\"\n",
        )
        .unwrap();
        let after = Policy::load(&config).unwrap();
        let lines = needs_restart(before.daemon(), &running, &after);
        for name in [
            "[daemon] admin_socket",
            "[daemon] admin_group",
            "[guard] cgroup",
            "[guard] require_family_guard",
            "[recording] dir",
            "[recording] max_total_mb",
            "[approvals] postgres",
            "[identity] state_file",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(name)),
                "{name} not reported: {lines:#?}"
            );
        }
        // `[approvals] dir` with `postgres` is refused at load, so the
        // store's change is seen here as postgres alone.
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert!(
            lines
                .iter()
                .all(|l| l.contains("restart") && !l.contains("hunter2")),
            "{lines:#?}"
        );
        assert!(
            lines.contains(&"[guard] cgroup changed to other: it takes effect at restart; running with ci until then".to_owned()),
            "{lines:#?}"
        );

        std::fs::write(&config, "").unwrap();
        let gone = Policy::load(&config).unwrap();
        let lines = needs_restart(before.daemon(), &running, &gone);
        assert!(
            lines.iter().any(|l| l.starts_with("[guard] is gone")),
            "{lines:#?}"
        );
    }
}
