//! The UDP relay's loop: datagrams to `protocol = "udp"` targets. Each
//! (sender socket, destination) pair is a flow of its own, decided once
//! when its first datagram arrives, then relayed both ways by a task that
//! ends after `udp_idle_timeout` without traffic, logging the usual `flow`
//! event and closing the flow's recording.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway_common::udp_tag;
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::{debug, warn};

use super::{
    Shared,
    log_window::{Admit, LogWindow},
    serve::{Ended, end_flow, flow_facts, identity_of, start_event},
};
use crate::{
    flow::Flow,
    identity::JobIdentity,
    policy::{Decision, Mode, Verdict},
    protocols::{tcp::Transferred, udp},
    recording::SessionRecording,
};

/// Datagrams waiting for a flow's task; more are dropped, as a full
/// socket buffer would.
const QUEUE: usize = 256;
/// The largest UDP payload over IPv4 or IPv6 without jumbograms.
const MAX_DATAGRAM: usize = 65_535;
/// Open flows per relay socket. Each allowed one holds a socket and a
/// task until it is idle; a job sending from thousands of ports must not
/// exhaust the gateway's descriptors for everyone else.
const MAX_FLOWS: usize = 8192;
/// How often each kind of drop is logged at most.
const SHED_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the relay drops, each logged on its own window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dropped {
    Oversized,
    NoRecord,
    Shed,
}

/// Open flows by the sender's address and the packet mark (which names
/// the destination): the way to each flow's task.
type Flows = Arc<Mutex<HashMap<(SocketAddr, u32), FlowQueue>>>;

/// Bytes of datagrams one flow may have waiting for its task: [`QUEUE`]
/// datagrams of up to 64 KiB would be 16 MiB per flow, and a job may have
/// as many flows as connections.
const QUEUE_BYTES: usize = 1 << 20;

/// The way into a flow's task, bounded in datagrams and in bytes.
#[derive(Clone)]
struct FlowQueue {
    tx: mpsc::Sender<Bytes>,
    bytes: Arc<AtomicUsize>,
}

/// What a flow's task reads: gives each datagram's bytes back.
struct FlowInbox {
    rx: mpsc::Receiver<Bytes>,
    bytes: Arc<AtomicUsize>,
}

fn flow_queue() -> (FlowQueue, FlowInbox) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        FlowQueue {
            tx,
            bytes: bytes.clone(),
        },
        FlowInbox { rx, bytes },
    )
}

impl FlowQueue {
    /// Queues `datagram`, or drops it when the flow is full or closing (as
    /// a full socket buffer would).
    fn offer(&self, datagram: Bytes) -> bool {
        let len = datagram.len();
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        if self.tx.try_send(datagram).is_err() {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl FlowInbox {
    async fn recv(&mut self) -> Option<Bytes> {
        let datagram = self.rx.recv().await?;
        self.bytes.fetch_sub(datagram.len(), Ordering::Relaxed);
        Some(datagram)
    }
}

/// Serves one relay socket (IPv4 or IPv6 loopback).
pub(crate) async fn serve_relay(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Said once per episode of running full, not once per datagram.
    let mut full = false;
    // Each kind of drop is logged at most once per SHED_LOG_EVERY: a job
    // over its limit would otherwise log a line per new flow, and any
    // local process can send to the relay with no kernel record.
    let said = LogWindow::new(1, SHED_LOG_EVERY);
    loop {
        let (n, peer, tag) = match udp::recv_marked(&socket, &mut buf).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                if let Admit::Log { unlogged } = said.admit(Dropped::Oversized, Instant::now()) {
                    warn!(error = %e, unlogged, "UDP datagram dropped");
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "UDP relay receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        let key = (peer, tag);
        let open = lock(&flows).get(&key).cloned();
        if let Some(queue) = open {
            if !queue.offer(datagram) {
                debug!(%peer, "UDP flow queue full or closing; datagram dropped");
            }
            continue;
        }
        // The kernel keys each sender's record by local port and mark; the
        // mark must also be the one its record hashes to, or the datagram
        // did not come through the redirect (fail closed).
        let rec = shared
            .attached
            .udp_peers
            .get(peer.port(), tag)
            .filter(|r| udp_tag(r.cookie, &r.dst_addr, r.dst_port) == tag);
        let Some(rec) = rec else {
            if let Admit::Log { unlogged } = said.admit(Dropped::NoRecord, Instant::now()) {
                warn!(%peer, unlogged, "UDP datagram with no kernel record; dropped");
            }
            continue;
        };
        // A flow holds a socket and a task until idle, like a connection:
        // it counts against the job's connection limit.
        let limit = shared.policy.load().daemon().max_connections_per_job;
        let slot = match shared.connections.take(rec.cgroup_id, limit) {
            Ok(slot) => slot,
            Err(at) => {
                crate::admin::metrics::connection(
                    "udp",
                    "shed",
                    "max_connections_per_job",
                    "gateway",
                    0,
                    0,
                );
                if let Admit::Log { unlogged } = said.admit(Dropped::Shed, Instant::now()) {
                    warn!(
                        unlogged,
                        pid = rec.pid,
                        cgroup_id = rec.cgroup_id,
                        open = at.open,
                        limit,
                        decision = "shed",
                        "UDP flow dropped: the job already has {} connections and flows open, its limit ([daemon] max_connections_per_job)",
                        at.open
                    );
                }
                continue;
            }
        };
        let (tx, rx) = flow_queue();
        let _ = tx.offer(datagram);
        {
            let mut open = lock(&flows);
            if open.len() >= MAX_FLOWS {
                if !full {
                    warn!(
                        open = open.len(),
                        pid = rec.pid,
                        "too many open UDP flows; new flows are dropped until some go idle"
                    );
                }
                full = true;
                continue;
            }
            full = false;
            open.insert(key, tx);
        }
        let flow = Flow::from_datagram(peer, &rec);
        tokio::spawn(relay_flow(
            shared.clone(),
            socket.clone(),
            flows.clone(),
            key,
            (flow, slot),
            rx,
        ));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One flow, from its first datagram until it has been idle for
/// `udp_idle_timeout`.
async fn relay_flow(
    shared: Arc<Shared>,
    relay: Arc<UdpSocket>,
    flows: Flows,
    key: (SocketAddr, u32),
    (flow, _slot): (Flow, super::job_connections::Slot),
    mut rx: FlowInbox,
) {
    let started = Instant::now();
    let job = shared.jobs.job_of(flow.cgroup_id);
    let policy = shared.policy.load_full();
    let names = shared
        .names
        .names(flow.cgroup_id, flow.dst.ip(), Instant::now());
    let mut facts = flow_facts(&flow, job.as_deref(), &names);
    facts.udp = true;
    let decision = policy.evaluate(&facts);
    let mode = policy.daemon().mode;
    let forward = decision.verdict == Verdict::Allow || mode == Mode::Audit;
    let recording = shared
        .recorder
        .open(start_event(&flow, job.as_deref(), &decision, mode, "udp"))
        .await;
    // From the policy the flow was decided under: a reload's new timeout
    // applies to the flows that start after it.
    let idle = policy.daemon().udp_idle_timeout;
    let decided = Decided {
        flow: &flow,
        job: job.as_deref(),
        decision: &decision,
        mode,
    };

    let mut moved = Transferred::default();
    let mut error = None;
    let upstream = if let Err(why) = recording.healthy() {
        error = Some(format!("refused: the session cannot be recorded: {why}"));
        None
    } else if forward {
        match udp::connect_upstream(flow.dst, shared.daemon.exempt_mark) {
            Ok(s) => Some(s),
            Err(e) => {
                error = Some(format!("upstream {}: {e}", flow.dst));
                None
            }
        }
    } else {
        None
    };
    let Some(upstream) = upstream else {
        // Refused: said once, now; the flow's later datagrams are dropped
        // quietly until it has been idle, so a job cannot flood the log.
        if let Some(first) = rx.recv().await {
            moved.up = first.len() as u64;
        }
        finish(&decided, moved, error, recording, started);
        drain_until_idle(&mut rx, idle).await;
        lock(&flows).remove(&key);
        return;
    };

    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut deadline = idle_deadline(idle);
    loop {
        tokio::select! {
            datagram = rx.recv() => {
                let Some(datagram) = datagram else { break };
                deadline = idle_deadline(idle);
                moved.up += datagram.len() as u64;
                // ECONNREFUSED (an ICMP error for an earlier datagram) and
                // the like: UDP promises nothing, the flow goes on.
                if let Err(e) = upstream.send(&datagram).await {
                    error = Some(format!("upstream {}: {e}", flow.dst));
                }
            }
            reply = upstream.recv(&mut buf) => match reply {
                Ok(n) => {
                    deadline = idle_deadline(idle);
                    moved.down += n as u64;
                    if let Err(e) = relay.send_to(&buf[..n], flow.peer).await {
                        error = Some(format!("reply to {}: {e}", flow.peer));
                    }
                }
                Err(e) => error = Some(format!("upstream {}: {e}", flow.dst)),
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    // Out of the table first: a datagram arriving from now on starts a
    // new flow instead of waiting in this one's queue.
    lock(&flows).remove(&key);
    finish(&decided, moved, error, recording, started);
}

/// When a flow idle for `idle` from now ends. The policy caps the timeout at
/// a day; past the clock's range the flow just never times out.
fn idle_deadline(idle: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(idle)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

async fn drain_until_idle(rx: &mut FlowInbox, idle: Duration) {
    while let Ok(Some(_)) = tokio::time::timeout(idle, rx.recv()).await {}
}

/// A decided flow, as its log event names it.
struct Decided<'a> {
    flow: &'a Flow,
    job: Option<&'a JobIdentity>,
    decision: &'a Decision,
    mode: Mode,
}

fn finish(
    decided: &Decided<'_>,
    moved: Transferred,
    error: Option<String>,
    recording: SessionRecording,
    started: Instant,
) {
    end_flow(
        decided.flow,
        &identity_of(decided.job),
        (decided.decision, decided.mode),
        Ended {
            moved,
            error,
            started,
            statements: 0,
            denied: u64::from(decided.decision.verdict == Verdict::Deny),
        },
        recording,
    );
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[tokio::test]
    async fn a_flow_queues_at_most_a_mebibyte() {
        let (queue, mut inbox) = flow_queue();
        let datagram = Bytes::from(vec![0u8; 60_000]);
        let taken = (0..QUEUE).filter(|_| queue.offer(datagram.clone())).count();
        assert_eq!(taken, QUEUE_BYTES / 60_000);
        // Reading gives the bytes back.
        assert_eq!(inbox.recv().await.map(|d| d.len()), Some(60_000));
        assert!(queue.offer(datagram.clone()));
        assert!(!queue.offer(datagram));
        // Small datagrams are still bounded by count.
        let (queue, _inbox) = flow_queue();
        let small = Bytes::from_static(b"x");
        assert_eq!(
            (0..QUEUE + 10)
                .filter(|_| queue.offer(small.clone()))
                .count(),
            QUEUE
        );
    }
}
