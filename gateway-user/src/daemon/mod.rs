//! `chokepoint run`: load the policy, bind the listeners, attach the kernel
//! programs, then serve until SIGTERM. Each step fails with one clear line
//! and leaves nothing attached that was not attached before.
mod dns;
mod job_connections;
mod log_window;
mod logging;
mod refused;
mod reload;
mod serve;
mod udp;
mod watch;

use std::{path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;
pub use logging::{LogFormat, init_logging};
use tracing::{info, warn};

use crate::{
    admin::AdminSocket,
    ebpf::{self, Attached, LoadOptions},
    flow::{self, Listeners},
    policy::{DaemonSettings, Policy, PolicyErrors},
    recording::Recorder,
};

/// Everything `run` needs from the command line.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid configuration:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error("{0}: add a [guard] section with `cgroup = \"...\"` naming the cgroup to guard")]
    NoGuard(String),
    #[error(transparent)]
    Bind(#[from] flow::BindError),
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error("session recording: {0}: fix [recording] dir/keys_dir or their permissions")]
    Recording(String),
    #[error("approvals: {0}: fix [approvals] dir or postgres")]
    Approvals(String),
    #[error("{0}")]
    Admin(String),
    #[error("{0}: pick a free port for [daemon] metrics_listen")]
    Metrics(String),
    #[error("[daemon] ports: {0}")]
    AutomaticPorts(String),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Jobs(#[from] crate::identity::StateError),
}

/// The job bindings the last run saved, minus those whose cgroup is gone
/// or changed (each logged).
fn restore_jobs(
    state: &std::path::Path,
    cgroup_root: Option<&std::path::Path>,
) -> Result<crate::identity::Bindings, RunError> {
    let state = crate::identity::StateFile::open(state.to_path_buf())?;
    let path = state.path().display().to_string();
    let (bindings, dropped) =
        crate::identity::Bindings::open(state, std::time::SystemTime::now(), |cgroup, id| {
            cgroup_root.is_some_and(|root| crate::identity::cgroup_has_id(root, cgroup, id))
        })?;
    for job in dropped {
        info!(state = %path, "job binding not restored: {job}");
    }
    let restored = bindings.list().len();
    if restored > 0 {
        info!(state = %path, jobs = restored, "job bindings restored");
    }
    Ok(bindings)
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub policy: ArcSwap<Policy>,
    /// Settings fixed at start (a reload cannot move the port or cgroup).
    pub daemon: DaemonSettings,
    /// The rest of what was set up at start, for a reload to say which
    /// changes wait for a restart.
    pub started: reload::Started,
    pub attached: Attached,
    pub postgres: Arc<crate::protocols::postgres::PostgresShared>,
    /// Fixed at start: a reload does not move recordings.
    pub recorder: Arc<Recorder>,
    /// Fixed at start, like the recorder: the store does not move on reload.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Job bindings survive reloads; their issuers are replaced by them.
    pub jobs: Arc<crate::identity::Jobs>,
    /// Names each job resolved through the gateway, by address.
    pub names: Arc<crate::protocols::dns::NameTable>,
    /// Connections open per job, held to `max_connections_per_job`.
    pub connections: job_connections::JobConnections,
}

pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let policy = Policy::load(&opts.config)?;
    // Right after reading: a save from now on is a change to reload.
    let files = watch::Watch::new(&watch::watched(&policy));
    let guard = policy
        .guard()
        .cloned()
        .ok_or_else(|| RunError::NoGuard(opts.config.display().to_string()))?;
    let daemon = policy.daemon().clone();

    ebpf::preflight()?;
    // Before the recorder makes keys and a ledger: a cgroup that is wrong
    // in the file must not leave state behind (found in review).
    ebpf::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    let cgroup = ebpf::resolve_cgroup(&guard.cgroup, guard.create)?;
    // Before anything is attached: no guarded session may go unrecorded.
    let recorder = Recorder::start(policy.recording()).map_err(RunError::Recording)?;
    let approvals = crate::approvals::Approvals::start(policy.approvals(), &daemon.instance)
        .await
        .map_err(|e| RunError::Approvals(e.to_string()))?;
    let admin = AdminSocket::bind(
        &daemon.admin_socket,
        daemon.admin_group.as_ref().map(|(_, gid)| *gid),
    )
    .map_err(RunError::Admin)?;
    let cgroup_root = ebpf::cgroup2_mount().ok();
    let bindings = if policy.issuers().is_empty() && !policy.identity_state().exists() {
        // No token can bind, and nothing to restore: the file is left alone.
        crate::identity::Bindings::unopened(policy.identity_state())
    } else {
        restore_jobs(policy.identity_state(), cgroup_root.as_deref())?
    };
    let jobs = Arc::new(crate::identity::Jobs::new(
        policy.issuers().to_vec(),
        policy.runner_uids().to_vec(),
        policy.max_job(),
        cgroup_root,
        bindings,
    ));
    // Listeners first: a busy port must fail before anything is attached.
    flow::automatic_ports::check(&[
        ("listen_port", daemon.listen_port),
        ("dns_port", daemon.dns_port),
        ("udp_port", daemon.udp_port),
    ])
    .map_err(RunError::AutomaticPorts)?;
    // Programs a previous run left attached must know this process's
    // cgroup before it binds the ports they guard (a restarted service
    // may have a new cgroup).
    let exempt_cgroup = ebpf::own_exempt_id(&cgroup)?;
    ebpf::claim_pinned(&ebpf::PinDir::new(&daemon.instance), exempt_cgroup)?;
    let bound_at = ebpf::monotonic_ns();
    let Listeners { v4, v6 } = flow::bind_listeners(daemon.listen_port, daemon.exempt_mark)?;
    let metrics = match daemon.metrics_listen {
        Some(addr) => Some(
            crate::admin::metrics::bind(addr)
                .await
                .map_err(RunError::Metrics)?,
        ),
        None => None,
    };
    let (dns4, dns6) = flow::bind_udp(daemon.dns_port, daemon.exempt_mark)?;
    let (relay4, relay6) = flow::bind_udp(daemon.udp_port, daemon.exempt_mark)?;
    for socket in [&dns4, &dns6, &relay4, &relay6] {
        crate::protocols::udp::enable_marks(socket).map_err(|source| flow::BindError {
            addr: socket
                .local_addr()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            source,
        })?;
    }
    let attached = ebpf::attach(
        &LoadOptions {
            instance: daemon.instance.clone(),
            listen_port: daemon.listen_port,
            dns_port: daemon.dns_port,
            udp_port: daemon.udp_port,
            reach: policy.reach(),
            udp_reach: policy.udp_reach(),
            require_family_guard: guard.require_family_guard,
            loopback_clients_only: guard.loopback_clients_only,
            exempt_cgroup,
        },
        &cgroup,
    )?;
    let stale = attached.flows.forget_created_before(bound_at);
    if stale > 0 {
        info!(
            stale,
            "forgot flow records of connects made while no gateway listened"
        );
    }
    info!(
        instance = %daemon.instance,
        cgroup = %attached.cgroup.display(),
        port = daemon.listen_port,
        mode = %daemon.mode,
        adopted = attached.adopted,
        policy = %policy.summary(),
        "gateway ready"
    );
    if let Err(why) = &attached.family_guard {
        warn!(
            "sockets of families other than unix, inet, netlink and alg (vsock, packet, ...) are not refused in the guarded cgroup: {why}; set RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK on the runner's service instead"
        );
    }
    let shared = Arc::new(Shared {
        started: reload::Started {
            guard,
            recording: policy.recording().clone(),
            approvals: policy.approvals().clone(),
            identity_state: policy.identity_state().to_path_buf(),
        },
        policy: ArcSwap::from_pointee(policy),
        daemon,
        attached,
        postgres: Arc::default(),
        recorder,
        approvals: approvals.clone(),
        jobs: jobs.clone(),
        names: Arc::default(),
        connections: job_connections::JobConnections::default(),
    });

    // Handlers go in before READY: until they exist, SIGHUP or SIGTERM
    // would kill the process with its default action.
    let signals = serve::Signals::install().map_err(RunError::Signal)?;
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "sd_notify READY failed");
    }
    let admin = crate::admin::AdminContext {
        approvals,
        jobs,
        socket: admin,
    };
    for socket in [dns4, dns6] {
        tokio::spawn(dns::serve_udp(shared.clone(), Arc::new(socket)));
    }
    if let Some(listener) = metrics {
        tokio::spawn(crate::admin::metrics::serve(
            listener,
            shared.daemon.instance.clone(),
        ));
    }
    for socket in [relay4, relay6] {
        tokio::spawn(udp::serve_relay(shared.clone(), Arc::new(socket)));
    }
    for (ring, udp) in [
        (&shared.attached.refused, false),
        (&shared.attached.udp_refused, true),
    ] {
        if let Some(refused) = ring.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tokio::spawn(refused::log_refused(shared.clone(), refused, udp));
        }
    }
    let result = serve::serve(shared.clone(), v4, v6, admin, signals, &opts.config, files).await;
    shared.recorder.shutdown().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    info!(
        instance = %shared.daemon.instance,
        "gateway stopped; programs stay attached (connections are refused until it is back; `chokepoint detach` removes them)"
    );
    result
}
