//! Prometheus metrics (`[daemon] metrics_listen`): what the gateway decided,
//! counted since it started, and what the kernel programs counted since
//! they were attached, served as OpenMetrics text at `GET /metrics` on a
//! loopback address.
//!
//! Counting happens where the decisions are logged ([`connection`],
//! [`statement`], [`dns_query`], [`policy_reload`]), and held statements
//! are counted while they wait ([`approval_waiting`]); the kernel's counters
//! are read from the pinned maps at each scrape, so they survive daemon
//! restarts like the programs do.
//!
//! Nothing is counted until [`enable`] (the daemon calls it when
//! `metrics_listen` is set), so a gateway without metrics pays one atomic
//! load per decision.
//!
//! ```
//! use chokepoint::admin::metrics;
//! metrics::enable();
//! metrics::statement("allow", "ci-reads");
//! assert!(metrics::render("no-such-instance").contains("chokepoint_statements_total{decision=\"allow\",rule=\"ci-reads\"} "));
//! ```
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

/// Scrapes served at once; more wait. A scraper is one process polling
/// every few seconds; this only bounds what a local misbehaving client
/// can tie up.
const MAX_SCRAPES: usize = 8;

/// A scrape whose request headers take longer than this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    protocol: String,
    decision: String,
    rule: String,
    enforced_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    protocol: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    statements: Family<DecisionLabels, Counter>,
    dns: Family<DecisionLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    approvals: Family<EventLabels, Counter>,
    approvals_waiting: Gauge,
    recording_failures: Counter,
    fleet_rows_rejected: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let connections = Family::default();
    registry.register(
        "chokepoint_connections",
        "Connections, counted when they end (refused ones at once), by protocol, decision and deciding rule (enforced_by=kernel: refused at connect, no rule could allow it)",
        connections.clone(),
    );
    let bytes = Family::default();
    registry.register(
        "chokepoint_connection_bytes",
        "Bytes moved by connections that ended, by protocol and direction (up: job to destination)",
        bytes.clone(),
    );
    let statements = Family::default();
    registry.register(
        "chokepoint_statements",
        "PostgreSQL statements decided, by decision (allow, deny, approve) and deciding rule",
        statements.clone(),
    );
    let dns = Family::default();
    registry.register(
        "chokepoint_dns_queries",
        "DNS questions the forwarder decided, by decision and deciding rule",
        dns.clone(),
    );
    let reloads = Family::default();
    registry.register(
        "chokepoint_policy_reloads",
        "Policy reloads, by result (ok, or invalid: the running policy was kept)",
        reloads.clone(),
    );
    let approvals = Family::default();
    registry.register(
        "chokepoint_approvals",
        "Steps of held statements' approvals, by event (requested, failed: the request could not be stored, notified, notify_failed, approved, denied, expired, cancelled, grant_used)",
        approvals.clone(),
    );
    let approvals_waiting = Gauge::default();
    registry.register(
        "chokepoint_approvals_waiting",
        "Statements this gateway holds for a human's approval right now",
        approvals_waiting.clone(),
    );
    let recording_failures = Counter::default();
    registry.register(
        "chokepoint_recording_failures",
        "Sessions whose recording failed (disk full, permissions): each is refused from then on",
        recording_failures.clone(),
    );
    let fleet_rows_rejected = Counter::default();
    registry.register(
        "chokepoint_recording_fleet_rows_rejected",
        "Refusals of a recorded event by the fleet database for what it holds (SQLSTATE class 22, 23 or 54): its session is incomplete there until a later re-send from its file is taken (the local recording has it; the log names session and seq)",
        fleet_rows_rejected.clone(),
    );
    Metrics {
        registry,
        connections,
        bytes,
        statements,
        dns,
        reloads,
        approvals,
        approvals_waiting,
        recording_failures,
        fleet_rows_rejected,
    }
});

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Starts counting.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A connection that ended (or was refused), as its log line says.
pub fn connection(
    protocol: impl std::fmt::Display,
    decision: impl std::fmt::Display,
    rule: &str,
    enforced_by: &'static str,
    up: u64,
    down: u64,
) {
    if !enabled() {
        return;
    }
    let m = &*METRICS;
    let protocol = protocol.to_string();
    m.connections
        .get_or_create(&ConnectionLabels {
            protocol: protocol.clone(),
            decision: decision.to_string(),
            rule: rule.to_owned(),
            enforced_by,
        })
        .inc();
    for (direction, n) in [("up", up), ("down", down)] {
        if n > 0 {
            m.bytes
                .get_or_create(&BytesLabels {
                    protocol: protocol.clone(),
                    direction,
                })
                .inc_by(n);
        }
    }
}

/// A PostgreSQL statement decided.
pub fn statement(decision: &str, rule: &str) {
    if !enabled() {
        return;
    }
    METRICS
        .statements
        .get_or_create(&DecisionLabels {
            decision: decision.to_owned(),
            rule: rule.to_owned(),
        })
        .inc();
}

/// A DNS question decided.
pub fn dns_query(decision: &str, rule: &str) {
    if !enabled() {
        return;
    }
    METRICS
        .dns
        .get_or_create(&DecisionLabels {
            decision: decision.to_owned(),
            rule: rule.to_owned(),
        })
        .inc();
}

/// A step of a held statement's approval (its recorded `event`).
pub fn approval(event: &str) {
    if !enabled() {
        return;
    }
    // The recorder's fixed set; anything else would be a new step that
    // this list has not learnt yet, counted apart rather than dropped.
    const EVENTS: [&str; 9] = [
        "requested",
        "failed",
        "notified",
        "notify_failed",
        "approved",
        "denied",
        "expired",
        "cancelled",
        "grant_used",
    ];
    let event = EVENTS.into_iter().find(|e| *e == event).unwrap_or("other");
    METRICS
        .approvals
        .get_or_create(&EventLabels { event })
        .inc();
}

/// Counts a statement held for approval until the returned guard drops.
pub fn approval_waiting() -> Waiting {
    let counted = enabled();
    if counted {
        METRICS.approvals_waiting.inc();
    }
    Waiting { counted }
}

/// One held statement in `chokepoint_approvals_waiting`.
#[derive(Debug)]
pub struct Waiting {
    // Whether this one was added, so enabling metrics mid-wait cannot
    // take away one that never was.
    counted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.counted {
            METRICS.approvals_waiting.dec();
        }
    }
}

/// A session's recording failed.
pub fn recording_failure() {
    if enabled() {
        METRICS.recording_failures.inc();
    }
}

/// The fleet database refused a recorded event, whose session the sink owes.
pub fn fleet_row_rejected() {
    if enabled() {
        METRICS.fleet_rows_rejected.inc();
    }
}

/// A policy reload, taken or refused.
pub fn policy_reload(ok: bool) {
    if !enabled() {
        return;
    }
    let result = if ok { "ok" } else { "invalid" };
    METRICS
        .reloads
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// The kernel programs' counters of `instance`, read at each scrape.
#[derive(Debug)]
struct Kernel {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

impl Collector for Kernel {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = match crate::ebpf::status(&self.instance) {
            Ok(s) => s,
            Err(e) => {
                // The gateway's own counters are still worth a scrape.
                debug!(error = %e, "metrics: kernel counters unavailable");
                return Ok(());
            }
        };
        let attached = ConstGauge::new(i64::from(status.attached));
        attached.encode(encoder.encode_descriptor(
            "chokepoint_attached",
            "1 while the kernel programs are attached to the guarded cgroup (pinned: also while the daemon is down)",
            None,
            attached.metric_type(),
        )?)?;
        let c = &status.counters;
        let mut events = encoder.encode_descriptor(
            "chokepoint_kernel_events",
            "Events the kernel programs counted since they were attached: TCP connects redirected to the gateway; connects or sends refused (denied: UDP, full maps; unreachable: no rule could allow the destination; refused_unlogged: of those, the ones the gateway was not told about); sockets refused at creation; the gateway's own (exempt) sockets; records that could not be stored; datagrams sent to the UDP relay; connects and sends refused because their job held its share of the kernel's records (job_quota)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (event, value) in [
            ("redirected", c.redirected),
            ("denied", c.denied),
            ("unreachable", c.unreachable),
            ("socket_denied", c.socket_denied),
            ("exempt", c.exempt),
            ("record_failed", c.record_failed),
            ("refused_unlogged", c.refused_unlogged),
            ("udp_relayed", c.udp_relayed),
            ("job_quota", c.job_quota),
        ] {
            ConstCounter::new(value).encode(events.encode_family(&EventLabels { event })?)?;
        }
        let mut fill = encoder.encode_descriptor(
            "chokepoint_kernel_flow_records",
            "Flow records in the kernel maps now: pending (connect seen, not yet keyed by the client's address) and flows (waiting for the gateway's accept); handshakes: open TCP sockets whose record went to flows, each charged to its job until closed; jobs: cgroups whose records the kernel's per-job share counts",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (map, value) in [
            ("pending", status.maps.pending),
            ("flows", status.maps.flows),
            ("handshakes", status.maps.handshakes),
            ("jobs", status.maps.jobs),
        ] {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(fill.encode_family(&MapLabels { map })?)?;
        }
        Ok(())
    }
}

/// The OpenMetrics text of the gateway's counters and `instance`'s
/// kernel counters.
pub fn render(instance: &str) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &METRICS.registry);
    let mut kernel = Registry::default();
    kernel.register_collector(Box::new(Kernel {
        instance: instance.to_owned(),
    }));
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &kernel);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// Serves `GET /metrics` on `listener` until the daemon stops.
pub async fn serve(listener: TcpListener, instance: String) {
    let instance: Arc<str> = Arc::from(instance);
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let instance = instance.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, instance.clone()));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

async fn answer<B>(
    request: Request<B>,
    instance: Arc<str>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".into(),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        ));
    }
    // Reading the pinned maps is a handful of bpf() calls: off the reactor.
    let body = tokio::task::spawn_blocking(move || render(&instance))
        .await
        .unwrap_or_default();
    Ok(reply(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body,
    ))
}

/// Binds the metrics listener (an error names the address) and starts
/// counting.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen for metrics on {addr} ([daemon] metrics_listen): {e}")
    })?;
    enable();
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `series`.
    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn approval_steps_and_recording_failures_are_counted() {
        enable();
        let before = |series: &str| sample(&render("no-such-instance"), series).unwrap_or(0);
        let requested = r#"chokepoint_approvals_total{event="requested"}"#;
        let other = r#"chokepoint_approvals_total{event="other"}"#;
        let failures = "chokepoint_recording_failures_total";
        let rejected = "chokepoint_recording_fleet_rows_rejected_total";
        let (r0, o0, f0, x0) = (
            before(requested),
            before(other),
            before(failures),
            before(rejected),
        );
        approval("requested");
        approval("a step added later");
        recording_failure();
        fleet_row_rejected();
        // Other tests in this process may count too: at least ours.
        let text = render("no-such-instance");
        assert!(sample(&text, requested) > Some(r0), "{text}");
        assert!(sample(&text, other) > Some(o0), "{text}");
        assert!(sample(&text, failures) > Some(f0), "{text}");
        assert!(sample(&text, rejected) > Some(x0), "{text}");
    }

    #[test]
    fn a_held_statement_is_waiting_until_its_guard_drops() {
        enable();
        let waiting = "chokepoint_approvals_waiting";
        // Gauges can go down too, so other tests' guards would make exact
        // values racy: this test is the only one holding guards.
        let before = sample(&render("no-such-instance"), waiting).unwrap_or(0);
        let (a, b) = (approval_waiting(), approval_waiting());
        assert_eq!(
            sample(&render("no-such-instance"), waiting),
            Some(before + 2)
        );
        drop(a);
        assert_eq!(
            sample(&render("no-such-instance"), waiting),
            Some(before + 1)
        );
        drop(b);
        assert_eq!(sample(&render("no-such-instance"), waiting), Some(before));
    }
}
