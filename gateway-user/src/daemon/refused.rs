//! Connects and datagrams the kernel refused because no rule could allow
//! their destination (`CP_REACH`, `CP_UDP_REACH`): logged and recorded
//! like the ones the gateway refuses, so a denial shows up the same
//! wherever it happened. The kernel reports a refused datagram once per
//! socket and destination.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_common::FlowRecord;
use tracing::{Instrument, error, warn};

use super::{
    Shared,
    log_window::{Admit, LogWindow},
    serve::{Outcome, flow_facts, flow_span, identity_of, log_flow, start_event},
};
use crate::{
    ebpf::RefusedFlows,
    flow::Flow,
    policy::{Decision, Protocol, Verdict},
    protocols::tcp::Transferred,
    recording::Body,
};

/// Names the refusal when the current policy would have allowed the
/// destination: the kernel's set lags a reload by a few map writes.
const KERNEL_RULE: &str = "kernel-reach";

/// Logs what the kernel reports through `refused`: datagrams when `udp`,
/// else TCP connects.
pub(super) async fn log_refused(shared: Arc<Shared>, refused: RefusedFlows, udp: bool) {
    let mut refused = match refused.listen() {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot watch the kernel's refused connects; they are refused but not logged");
            return;
        }
    };
    let throttle = LogWindow::new(PER_WINDOW, WINDOW);
    loop {
        match refused.next_batch().await {
            Ok(batch) => {
                for rec in batch {
                    match throttle.admit(rec.cgroup_id, Instant::now()) {
                        Admit::Log { unlogged } => {
                            if unlogged > 0 {
                                warn!(
                                    cgroup_id = rec.cgroup_id,
                                    refused = unlogged,
                                    "the kernel refused {unlogged} more connects or datagrams of this job than are logged and recorded one by one ({PER_WINDOW} per {} s); counted in chokepoint_connections_total",
                                    WINDOW.as_secs()
                                );
                            }
                            one(&shared, &rec, udp).await;
                        }
                        Admit::Count => counted_only(&shared, &rec, udp),
                    }
                }
            }
            Err(e) => {
                // The refusals still happen; only their log lines stop.
                error!(error = %e, "cannot read the kernel's refused connects; they are no longer logged");
                return;
            }
        }
    }
}

/// Refusals each job gets logged and recorded one by one per
/// [`WINDOW`]; past that, a job looping on a forbidden connect would
/// open a recording file and write a log line per attempt (disk and
/// inodes every job's recordings need), so the rest of the window's are
/// counted in the metrics and summed up in one warning at the job's next
/// logged refusal.
/// The kernel refuses every one of them either way.
const PER_WINDOW: u32 = 50;
const WINDOW: Duration = Duration::from_secs(10);

/// A refusal past the job's [`PER_WINDOW`]: only counted.
fn counted_only(shared: &Shared, rec: &FlowRecord, udp: bool) {
    let flow = Flow::refused_in_kernel(rec);
    let job = shared.jobs.job_of(flow.cgroup_id);
    let decision = decide(shared, &flow, job.as_deref(), udp);
    crate::admin::metrics::connection(
        decision.protocol,
        decision.verdict,
        decision.rule_name(),
        "kernel",
        0,
        0,
    );
}

/// The policy's verdict on a refused flow: its deny rule, or
/// [`KERNEL_RULE`] when the current policy would allow it.
fn decide(
    shared: &Shared,
    flow: &Flow,
    job: Option<&crate::identity::JobIdentity>,
    udp: bool,
) -> Decision {
    let policy = shared.policy.load_full();
    let names = shared
        .names
        .names(flow.cgroup_id, flow.dst.ip(), Instant::now());
    let mut facts = flow_facts(flow, job, &names);
    facts.udp = udp;
    let decision = policy.evaluate(&facts);
    if decision.verdict == Verdict::Deny {
        return decision;
    }
    Decision {
        verdict: Verdict::Deny,
        rule: Some(Arc::from(KERNEL_RULE)),
        target: None,
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
    }
}

async fn one(shared: &Shared, rec: &FlowRecord, udp: bool) {
    let started = Instant::now();
    let flow = Flow::refused_in_kernel(rec);
    let job = shared.jobs.job_of(flow.cgroup_id);
    let identity = identity_of(job.as_deref());
    let decision = decide(shared, &flow, job.as_deref(), udp);
    let policy = shared.policy.load_full();
    let mode = policy.daemon().mode;
    let span = flow_span(&flow, &identity);
    async {
        let protocol = if udp { "udp" } else { "tcp" };
        let start = start_event(&flow, job.as_deref(), &decision, mode, protocol);
        let recording = shared.recorder.open(start).await;
        log_flow(
            &flow,
            &identity,
            &decision,
            mode,
            Outcome {
                moved: Transferred::default(),
                error: None,
                started,
                enforced_by: "kernel",
            },
        );
        recording.close(Body::SessionEnd {
            bytes_up: 0,
            bytes_down: 0,
            statements: 0,
            denied: 0,
            error: Some(format!(
                "refused at {}() by the kernel: no rule allows this destination",
                if udp { "sendto" } else { "connect" }
            )),
        });
    }
    .instrument(span)
    .await;
}
