//! Connects and datagrams the kernel refused because no rule could allow
//! their destination (`CP_REACH`, `CP_UDP_REACH`): logged and recorded
//! like the ones the gateway refuses, so a denial shows up the same
//! wherever it happened. The kernel reports a refused datagram once per
//! socket and destination.
use std::{sync::Arc, time::Instant};

use gateway_common::FlowRecord;
use tracing::{Instrument, error};

use super::{
    Shared,
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
    loop {
        match refused.next_batch().await {
            Ok(batch) => {
                for rec in batch {
                    one(&shared, &rec, udp).await;
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

async fn one(shared: &Shared, rec: &FlowRecord, udp: bool) {
    let started = Instant::now();
    let flow = Flow::refused_in_kernel(rec);
    let job = shared.jobs.job_of(flow.cgroup_id);
    let identity = identity_of(job.as_deref());
    let policy = shared.policy.load_full();
    let names = shared
        .names
        .names(flow.cgroup_id, flow.dst.ip(), Instant::now());
    let mut facts = flow_facts(&flow, job.as_deref(), &names);
    facts.udp = udp;
    let mut decision = policy.evaluate(&facts);
    if decision.verdict != Verdict::Deny {
        decision = Decision {
            verdict: Verdict::Deny,
            rule: Some(Arc::from(KERNEL_RULE)),
            target: None,
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        };
    }
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
