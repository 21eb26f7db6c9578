//! DNS glue: the UDP listener's loop and the TCP path, each query answered by `protocols::dns` under the current policy and recorded as a session of its own connection or datagram.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_common::dns_tag;
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, warn};

use super::{
    Shared,
    log_window::{Admit, LogWindow},
    serve::{Ended, end_flow, identity_of, start_event},
};
use crate::{
    flow::Flow,
    identity::JobIdentity,
    policy::{Decision, Mode, Protocol, Verdict},
    protocols::{
        dns::{
            DnsContext,
            in_flight::InFlight,
            message::{for_udp, refusal},
            session::{self, DnsSummary},
        },
        tcp::{self, Transferred},
        udp,
    },
    recording::SessionRecording,
};

/// How often each kind of dropped datagram is logged while they keep
/// coming: a job floods the listener at will, and any local process can
/// send to it with no kernel record at all.
const SAY_EVERY: Duration = Duration::from_secs(10);

/// What the listener drops or turns away, each logged on its own window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dropped {
    NoRecord,
    OtherSocket,
    Shed,
    Malformed,
}

/// The DNS listener (one UDP socket): each datagram is answered in its own
/// task, as its sender (from the kernel's record) may be answered. Each
/// such task holds a recording and an upstream connection, so only so
/// many run at once, per job and in all ([`InFlight`]); a query over the
/// bound is answered SERVFAIL at once, unrecorded.
pub(crate) async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    let in_flight = InFlight::default();
    let said = Arc::new(LogWindow::new(1, SAY_EVERY));
    loop {
        let (n, peer, mark) = match udp::recv_marked(&socket, &mut buf).await {
            Ok(r) => r,
            // Larger than any query the listener takes: dropped whole, not cut.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                debug!(error = %e, "DNS datagram dropped");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "DNS listener receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let Some(rec) = shared.attached.dns_peers.get(peer.port()) else {
            // Not from a redirected socket of a guarded process: no one to
            // attribute it to, so no answer (fail closed).
            if let Admit::Log { unlogged } = said.admit(Dropped::NoRecord, Instant::now()) {
                warn!(%peer, unlogged, "DNS datagram with no kernel record; dropped");
            }
            continue;
        };
        if mark != dns_tag(rec.cookie) {
            // The record is another socket's: one on another local address
            // sent from the same port since (or the datagram is not from a
            // redirected socket at all). Its sender will ask again.
            if let Admit::Log { unlogged } = said.admit(Dropped::OtherSocket, Instant::now()) {
                warn!(%peer, unlogged, "DNS datagram whose sender's record another socket on the same port replaced; dropped");
            }
            continue;
        }
        let slot = match in_flight.try_take(rec.cgroup_id) {
            Ok(slot) => slot,
            Err(full) => {
                crate::admin::metrics::dns_query("shed", full.as_str());
                if let Admit::Log { unlogged } = said.admit(Dropped::Shed, Instant::now()) {
                    warn!(
                        unlogged,
                        bound = full.as_str(),
                        cgroup_id = rec.cgroup_id,
                        "DNS query over the in-flight bound answered SERVFAIL, unrecorded"
                    );
                }
                // Best effort and never waiting: the client learns at once
                // that this resolver is busy, and a full send buffer only
                // drops the answer.
                if let Ok(parsed) = hickory_proto::op::Message::from_vec(&query) {
                    let busy = refusal(&parsed, hickory_proto::op::ResponseCode::ServFail);
                    let _ = socket.try_send_to(&busy, peer);
                }
                continue;
            }
        };
        let (shared, socket, said) = (shared.clone(), socket.clone(), said.clone());
        tokio::spawn(async move {
            // Held until the query is answered and recorded.
            let _slot = slot;
            let started = Instant::now();
            let flow = Flow::from_datagram(peer, &rec);
            let job = shared.jobs.job_of(flow.cgroup_id);
            let policy = shared.policy.load_full();
            let Ok(parsed) = hickory_proto::op::Message::from_vec(&query) else {
                if let Admit::Log { unlogged } = said.admit(Dropped::Malformed, Instant::now()) {
                    warn!(%peer, unlogged, "malformed DNS datagram dropped");
                }
                return;
            };
            let Some(dns) = policy.dns() else {
                let refused = refusal(&parsed, hickory_proto::op::ResponseCode::Refused);
                let _ = socket.send_to(&refused, peer).await;
                return;
            };
            let ctx = DnsContext {
                settings: dns.clone(),
                policy: policy.clone(),
                names: shared.names.clone(),
                mark: shared.daemon.exempt_mark,
                mode: policy.daemon().mode,
                job: job.clone(),
            };
            let mode = ctx.mode;
            let (decision, recording) = open(&shared, &flow, job.as_deref(), mode, "dns-udp").await;
            let mut summary = DnsSummary {
                bytes_up: n as u64,
                ..DnsSummary::default()
            };
            if recording.healthy().is_ok()
                && let Some(answer) =
                    session::answer(&ctx, &flow, &query, &recording, &mut summary).await
            {
                let answer = for_udp(&parsed, answer);
                summary.bytes_down = answer.len() as u64;
                if let Err(e) = socket.send_to(&answer, peer).await {
                    summary.error = Some(format!("reply: {e}"));
                }
            }
            close(
                &flow,
                job.as_deref(),
                (&decision, mode),
                summary,
                recording,
                started,
            );
        });
    }
}

/// A connection to port 53 when `[dns]` is set: the forwarder answers,
/// whatever resolver address the job chose.
pub(super) async fn serve_tcp(
    shared: &Shared,
    ctx: Arc<DnsContext>,
    client: TcpStream,
    flow: &Flow,
    job: Option<&JobIdentity>,
    started: Instant,
) {
    let mode = ctx.mode;
    let (decision, recording) = open(shared, flow, job, mode, "dns").await;
    let summary = if let Err(why) = recording.healthy() {
        tcp::refuse(client).await;
        DnsSummary {
            error: Some(format!("refused: the session cannot be recorded: {why}")),
            ..Default::default()
        }
    } else {
        session::serve_tcp(ctx, flow, client, &recording).await
    };
    close(flow, job, (&decision, mode), summary, recording, started);
}

/// DNS is always the forwarder's to answer: the decision the flow event
/// and recording show, and the recording opened with it. The mode says
/// whether the questions' denials were enforced or only audited.
async fn open(
    shared: &Shared,
    flow: &Flow,
    job: Option<&JobIdentity>,
    mode: Mode,
    protocol: &str,
) -> (Decision, SessionRecording) {
    let decision = Decision {
        verdict: Verdict::Allow,
        rule: Some(Arc::from("dns")),
        target: None,
        protocol: Protocol::Tcp,
    };
    let start = start_event(flow, job, &decision, mode, protocol);
    let recording = shared.recorder.open(start).await;
    (decision, recording)
}

fn close(
    flow: &Flow,
    job: Option<&JobIdentity>,
    (decision, mode): (&Decision, Mode),
    summary: DnsSummary,
    recording: SessionRecording,
    started: Instant,
) {
    end_flow(
        flow,
        &identity_of(job),
        (decision, mode),
        Ended {
            moved: Transferred {
                up: summary.bytes_up,
                down: summary.bytes_down,
            },
            error: summary.error,
            started,
            statements: summary.queries,
            denied: summary.denied,
        },
        recording,
    );
}
