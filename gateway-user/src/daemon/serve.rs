//! Accepting guarded connections and handling each one in its own task.
use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{Signal, SignalKind, signal},
};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{
    RunError, Shared,
    log_window::{Admit, LogWindow},
    reload::reload,
    watch,
};
use crate::admin::AdminContext;
use crate::{
    flow::{self, Flow},
    policy::{Decision, FlowFacts, Mode, Protocol, Verdict},
    protocols::{
        postgres::{self, PostgresContext},
        tcp::{self, Transferred},
    },
    recording::{Body, Identity},
};

/// How long in-flight connections may finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(5);
/// A record not taken within this long belongs to a connection that will
/// never be accepted.
const RECORD_MAX_AGE: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Retention passes (the first right at start).
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Approval store pruning (the first right at start): each pass reads
/// every settled request, and a request settles in minutes or hours.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The signals the daemon handles, installed before it reports ready.
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    v4: TcpListener,
    v6: TcpListener,
    admin: AdminContext,
    signals: Signals,
    config: &Path,
    mut files: watch::Watch,
) -> Result<(), RunError> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    let tasks = TaskTracker::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut retention = tokio::time::interval(RETENTION_EVERY);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut look = tokio::time::interval(watch::EVERY);
    loop {
        let accepted = tokio::select! {
            r = v4.accept() => r,
            r = v6.accept() => r,
            _ = hup.recv() => {
                let read = watch::Watch::before_reload(&watch::watched(&shared.policy.load()));
                reload(&shared, config);
                files.reloaded(read);
                continue;
            }
            _ = look.tick() => {
                if files.changed(&watch::watched(&shared.policy.load())) {
                    info!("a policy file changed: reloading");
                    let read = watch::Watch::before_reload(&watch::watched(&shared.policy.load()));
                    reload(&shared, config);
                    files.reloaded(read);
                }
                continue;
            }
            r = admin.socket.accept() => {
                match r {
                    Ok(stream) => { tasks.spawn(crate::admin::serve_connection(stream, admin.handles())); }
                    Err(e) => {
                        warn!(error = %e, socket = %admin.socket.path().display(), "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = retention.tick() => {
                let recorder = shared.recorder.clone();
                tasks.spawn(async move {
                    match tokio::task::spawn_blocking(move || recorder.enforce_retention()).await {
                        Ok(Ok(r)) if r.files > 0 => info!(files = r.files, bytes = r.bytes, "removed recordings past their retention"),
                        Ok(Err(e)) => warn!(error = %e, "recording retention pass failed"),
                        _ => {}
                    }
                });
                continue;
            }
            _ = prune.tick() => {
                let approvals = shared.approvals.clone();
                let keep = shared.policy.load().approvals().keep;
                tasks.spawn(async move {
                    match approvals.prune(keep).await {
                        Ok(0) => {}
                        Ok(removed) => info!(removed, keep = %humantime::format_duration(keep), "removed approval requests settled longer than [approvals] keep ago"),
                        Err(e) => warn!(error = %e, "approval store pruning failed"),
                    }
                });
                continue;
            }
            _ = sweep.tick() => {
                let removed = shared.attached.flows.sweep(RECORD_MAX_AGE);
                if removed > 0 {
                    info!(removed, "swept flow records whose connections were never accepted");
                }
                let idle = shared.attached.job_records.sweep();
                debug!(idle, "forgot the kernel record counts of jobs holding none");
                // Names past their TTL, and the cgroups of jobs that ended
                // or stopped resolving, otherwise stay until the next learn.
                shared.names.sweep(Instant::now());
                continue;
            }
        };
        match accepted {
            Ok((client, peer)) => {
                tasks.spawn(handle(shared.clone(), client, peer));
            }
            // EMFILE and friends: keep serving the connections we have.
            Err(e) => {
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        warn!(
            open = tasks.len(),
            "connections still open at shutdown were cut"
        );
    }
    Ok(())
}

/// How often one job's shed connections are logged at most: a job
/// hammering its limit would otherwise write a line per attempt.
const SHED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Connections with no kernel record logged per [`SHED_LOG_EVERY`]: any
/// local process can connect to the listener directly, as often as it
/// likes. Lost records (a bug) show in the first of them, and all are
/// counted in `chokepoint_connections_total{rule="no-record"}`.
static UNRECORDED_SAID: std::sync::LazyLock<LogWindow<()>> =
    std::sync::LazyLock::new(|| LogWindow::new(20, SHED_LOG_EVERY));

/// Shed connections logged per job: one line per [`SHED_LOG_EVERY`].
static SHED_SAID: std::sync::LazyLock<LogWindow<u64>> =
    std::sync::LazyLock::new(|| LogWindow::new(1, SHED_LOG_EVERY));

async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    // Reset while it waited in the accept queue: it carries nothing, and
    // on loopback its client port may already serve a new connection
    // whose record sits under the same (ip, port) key. Taking that record
    // here would leave the live connection without one, so leave it.
    if let Ok(Some(e)) = client.take_error() {
        debug!(%peer, error = %e, "connection reset before it was accepted; its flow record is left for the port's next connection");
        return;
    }
    let flow = match flow::recover(&shared.attached.flows, peer).await {
        Ok(flow) => flow,
        Err(e) => {
            crate::admin::metrics::connection("tcp", "deny", "no-record", "gateway", 0, 0);
            if let Admit::Log { unlogged } = UNRECORDED_SAID.admit((), Instant::now()) {
                warn!(%peer, unlogged, "{e}");
            }
            tcp::refuse(client).await;
            return;
        }
    };
    let job = shared.jobs.job_of(flow.cgroup_id);
    let identity = identity_of(job.as_deref());
    let span = flow_span(&flow, &identity);
    async move {
        // Before the policy: a reload after this read shows as a newer
        // generation to the session, which then takes it.
        let generation = shared.postgres.generation();
        let policy = shared.policy.load_full();
        // Before anything is opened for it (upstream, recording file): a
        // refused connection costs only its accept.
        let limit = policy.daemon().max_connections_per_job;
        let slot = match shared.connections.take(flow.cgroup_id, limit) {
            Ok(slot) => slot,
            Err(at) => {
                if let Admit::Log { unlogged: more } = SHED_SAID.admit(flow.cgroup_id, Instant::now()) {
                    warn!(
                        flow_id = flow.id,
                        pid = flow.pid,
                        uid = flow.uid,
                        comm = %flow.comm,
                        cgroup_id = flow.cgroup_id,
                        identity = %identity,
                        dst = %flow.dst,
                        open = at.open,
                        limit,
                        decision = "shed",
                        shed_since_last = more,
                        "connection refused: the job already has {} connections open, its limit ([daemon] max_connections_per_job)",
                        at.open
                    );
                }
                crate::admin::metrics::connection("tcp", "shed", "max_connections_per_job", "gateway", 0, 0);
                // A PostgreSQL client is told why; anything else is reset,
                // as a denied connection is.
                let names = destination_names(&shared, &flow);
                let facts = flow_facts(&flow, job.as_deref(), &names);
                if matches!(policy.evaluate(&facts).protocol, Protocol::Postgres) {
                    let message = format!(
                        "chokepoint: this job already has {} connections open, its limit ([daemon] max_connections_per_job)",
                        at.open
                    );
                    postgres::refuse_unstarted(client, "53300", &message).await;
                } else {
                    tcp::refuse(client).await;
                }
                return;
            }
        };
        if flow.dst.port() == 53
            && let Some(dns) = policy.dns()
        {
            let ctx = Arc::new(crate::protocols::dns::DnsContext {
                settings: dns.clone(),
                policy: policy.clone(),
                names: shared.names.clone(),
                mark: shared.daemon.exempt_mark,
                mode: policy.daemon().mode,
                job: job.clone(),
            });
            return super::dns::serve_tcp(&shared, ctx, client, &flow, job.as_deref(), started)
                .await;
        }
        let names = destination_names(&shared, &flow);
        let facts = flow_facts(&flow, job.as_deref(), &names);
        let (decision, mode) = (policy.evaluate(&facts), policy.daemon().mode);
        let forward = decision.verdict == Verdict::Allow || mode == Mode::Audit;
        let postgres = match (&decision.protocol, decision.target.as_deref()) {
            (Protocol::Postgres, Some(target)) => policy.postgres_target(target).map(|t| {
                Arc::new(PostgresContext {
                    target: t.clone(),
                    rules: policy.session_rules(&facts, target),
                    masking: policy.masking_for(target),
                    mode,
                    copy_out_masked: policy.copy_out_masked(),
                    mark: shared.daemon.exempt_mark,
                    shared: shared.postgres.clone(),
                    approvals: Some(shared.approvals.clone()),
                    job: job.clone(),
                    refresh: Some(refresh(&shared, &flow, target)),
                    generation,
                    budget: slot.budget(policy.daemon().max_buffered_per_job),
                })
            }),
            _ => None,
        };
        let recording = shared
            .recorder
            .open(start_event(
                &flow,
                job.as_deref(),
                &decision,
                mode,
                if postgres.is_some() {
                    "postgres"
                } else {
                    "tcp"
                },
            ))
            .await;
        let (mut statements, mut denied) = (0, 0);
        let (moved, error) = if let (true, Some(ctx)) = (forward, postgres) {
            // A response the session writes in pieces must not wait for
            // the job's delayed ACK (Nagle): that cost 40 ms stalls.
            let _ = client.set_nodelay(true);
            // The PostgreSQL session refuses with a protocol error itself
            // when the recording cannot be written.
            let summary = postgres::serve(ctx, &flow, client, &recording).await;
            (statements, denied) = (summary.statements, summary.denied);
            (
                Transferred {
                    up: summary.bytes_up,
                    down: summary.bytes_down,
                },
                summary.error,
            )
        } else if let Err(why) = recording.healthy() {
            tcp::refuse(client).await;
            (
                Transferred::default(),
                Some(format!("refused: the session cannot be recorded: {why}")),
            )
        } else if forward {
            forward_to(&shared, client, &flow).await
        } else if let (Protocol::Postgres, Some(target)) =
            (&decision.protocol, decision.target.as_deref())
        {
            // A PostgreSQL client shows why instead of "server closed the
            // connection unexpectedly".
            let message = format!(
                "chokepoint: connection to target {target} denied by rule {}",
                decision.rule_name()
            );
            postgres::refuse_unstarted(client, "42501", &message).await;
            (Transferred::default(), None)
        } else {
            tcp::refuse(client).await;
            (Transferred::default(), None)
        };
        // Free before the flow's event: whoever reads that event as "the
        // connection is over" may open the next one at once.
        drop(slot);
        end_flow(
            &flow,
            &identity,
            (&decision, mode),
            Ended {
                moved,
                error,
                started,
                statements,
                denied,
            },
            recording,
        );
    }
    .instrument(span)
    .await
}

/// How a PostgreSQL session of `flow` on `target` takes a reloaded
/// policy: the flow is decided again as at connect (its job binding and
/// destination names as they are now), then narrowed to the session's
/// role.
fn refresh(shared: &Arc<Shared>, flow: &Flow, target: &str) -> postgres::Refresh {
    let (shared, flow, target) = (shared.clone(), flow.clone(), Arc::<str>::from(target));
    Arc::new(move |role: &str| {
        let policy = shared.policy.load_full();
        let job = shared.jobs.job_of(flow.cgroup_id);
        let names = destination_names(&shared, &flow);
        let facts = flow_facts(&flow, job.as_deref(), &names);
        let (decision, mode) = (policy.evaluate(&facts), policy.daemon().mode);
        let rules = if decision.target.as_deref() != Some(&*target) {
            Err(format!(
                "the reloaded policy no longer routes this connection to target {target}; reconnect"
            ))
        } else if decision.verdict != Verdict::Allow && mode != Mode::Audit {
            Err(format!(
                "the reloaded policy denies this connection (rule {}); reconnect",
                decision.rule_name()
            ))
        } else {
            policy
                .session_rules(&facts, &target)
                .for_role(role)
                .map_err(|e| format!("after the policy reload, {e}"))
        };
        postgres::Refreshed {
            rules,
            mode,
            copy_out_masked: policy.copy_out_masked(),
            masking: policy.masking_for(&target),
        }
    })
}

async fn forward_to(
    shared: &Shared,
    mut client: TcpStream,
    flow: &Flow,
) -> (Transferred, Option<String>) {
    let mut upstream = match tcp::connect_upstream(flow.dst, shared.daemon.exempt_mark).await {
        Ok(s) => s,
        Err(e) => {
            tcp::refuse(client).await;
            return (
                Transferred::default(),
                Some(format!("upstream {}: {e}", flow.dst)),
            );
        }
    };
    let _ = client.set_nodelay(true);
    match tcp::passthrough(&mut client, &mut upstream).await {
        Ok(moved) => (moved, None),
        Err(e) => (Transferred::default(), Some(e.to_string())),
    }
}

/// The names the flow's job resolved its destination to, as of now: a
/// reload decides with the names learned since the connect.
fn destination_names(shared: &Shared, flow: &Flow) -> Vec<Arc<str>> {
    shared
        .names
        .names(flow.cgroup_id, flow.dst.ip(), Instant::now())
}

/// How logs and recordings name the job behind a flow.
pub(super) fn identity_of(job: Option<&crate::identity::JobIdentity>) -> String {
    job.map_or_else(
        || crate::identity::UNIDENTIFIED.to_owned(),
        crate::identity::JobIdentity::describe,
    )
}

pub(super) fn flow_span(flow: &Flow, identity: &str) -> tracing::Span {
    info_span!("flow", id = flow.id, pid = flow.pid, comm = %flow.comm, dst = %flow.dst, identity = %identity)
}

/// What policy sees of a flow; `names` are those the job resolved to its
/// destination.
pub(super) fn flow_facts<'a>(
    flow: &'a Flow,
    job: Option<&'a crate::identity::JobIdentity>,
    names: &'a [Arc<str>],
) -> FlowFacts<'a> {
    FlowFacts {
        dst: flow.dst,
        pid: flow.pid,
        uid: flow.uid,
        gid: flow.gid,
        comm: &flow.comm,
        claims: job.map(|j| &j.claims),
        names,
        udp: false,
    }
}

pub(super) fn start_event(
    flow: &Flow,
    job: Option<&crate::identity::JobIdentity>,
    decision: &Decision,
    mode: Mode,
    protocol: &str,
) -> Body {
    Body::SessionStart {
        identity: Identity {
            pid: flow.pid,
            uid: flow.uid,
            gid: flow.gid,
            comm: flow.comm.clone(),
            cgroup_id: flow.cgroup_id,
            job: job.cloned(),
        },
        dst: flow.dst.to_string(),
        protocol: protocol.to_owned(),
        target: decision.target.as_deref().map(str::to_owned),
        decision: decision.verdict.to_string(),
        rule: decision.rule_name().to_owned(),
        mode: mode.to_string(),
    }
}

/// How a flow the gateway served ended, for its log event and recording.
pub(super) struct Ended {
    pub moved: Transferred,
    pub error: Option<String>,
    pub started: Instant,
    pub statements: u64,
    pub denied: u64,
}

/// Logs a flow's event and closes its recording with the same figures.
pub(super) fn end_flow(
    flow: &Flow,
    identity: &str,
    (decision, mode): (&Decision, Mode),
    ended: Ended,
    recording: crate::recording::SessionRecording,
) {
    log_flow(
        flow,
        identity,
        decision,
        mode,
        Outcome {
            moved: ended.moved,
            error: ended.error.as_deref(),
            started: ended.started,
            enforced_by: "gateway",
        },
    );
    recording.close(Body::SessionEnd {
        bytes_up: ended.moved.up,
        bytes_down: ended.moved.down,
        statements: ended.statements,
        denied: ended.denied,
        error: ended.error,
    });
}

/// How a flow ended, for its log event.
pub(super) struct Outcome<'a> {
    pub moved: Transferred,
    pub error: Option<&'a str>,
    pub started: Instant,
    /// `"gateway"`, or `"kernel"` for a connect refused before it reached
    /// the gateway.
    pub enforced_by: &'static str,
}

pub(super) fn log_flow(
    flow: &Flow,
    identity: &str,
    decision: &Decision,
    mode: Mode,
    outcome: Outcome<'_>,
) {
    let Outcome {
        moved,
        error,
        started,
        enforced_by,
    } = outcome;
    info!(
        flow_id = flow.id,
        pid = flow.pid,
        uid = flow.uid,
        gid = flow.gid,
        comm = %flow.comm,
        cgroup_id = flow.cgroup_id,
        identity,
        dst = %flow.dst,
        decision = %decision.verdict,
        rule = decision.rule_name(),
        target = decision.target.as_deref().unwrap_or(""),
        protocol = %decision.protocol,
        mode = %mode,
        bytes_up = moved.up,
        bytes_down = moved.down,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        error = error.unwrap_or(""),
        enforced_by,
        "flow"
    );
    crate::admin::metrics::connection(
        decision.protocol,
        decision.verdict,
        decision.rule_name(),
        enforced_by,
        moved.up,
        moved.down,
    );
}
