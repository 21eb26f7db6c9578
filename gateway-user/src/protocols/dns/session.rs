//! One job's DNS-over-TCP connection: length-prefixed queries, each decided, forwarded or refused, recorded.
use std::{sync::Arc, time::Instant};

use hickory_proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{info, warn};

use super::{
    DnsContext,
    message::{self, DnsError},
    upstream,
};
use crate::{
    flow::Flow,
    policy::{DeniedAnswer, FlowFacts, Mode},
    recording::{Body, SessionRecording},
};

/// How long a DNS-over-TCP connection may sit without a complete query
/// before the gateway closes it (RFC 7766 §6.2.3 lets a server close idle
/// connections; resolvers reconnect). Each open connection counts against
/// its job's connection limit, so an idle one should not keep its place.
pub(crate) const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// What a DNS connection did, for the flow's event.
#[derive(Debug, Default)]
pub struct DnsSummary {
    pub queries: u64,
    pub denied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub error: Option<String>,
}

/// Serves queries until the job closes the connection.
pub async fn serve_tcp(
    ctx: Arc<DnsContext>,
    flow: &Flow,
    client: TcpStream,
    recording: &SessionRecording,
) -> DnsSummary {
    serve_tcp_idle(ctx, flow, client, recording, TCP_IDLE).await
}

/// [`serve_tcp`], closing after `idle` without a complete query.
pub(crate) async fn serve_tcp_idle(
    ctx: Arc<DnsContext>,
    flow: &Flow,
    mut client: TcpStream,
    recording: &SessionRecording,
    idle: std::time::Duration,
) -> DnsSummary {
    let mut summary = DnsSummary::default();
    loop {
        let query = match tokio::time::timeout(idle, read_query(&mut client)).await {
            Ok(Ok(Some(query))) => query,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                summary.error = Some(format!("client read: {e}"));
                break;
            }
            Err(_) => {
                info!(
                    flow_id = flow.id,
                    "DNS connection idle for {idle:?}; closing it"
                );
                break;
            }
        };
        let len = query.len();
        summary.bytes_up += 2 + len as u64;
        let answer = match answer(&ctx, flow, &query, recording, &mut summary).await {
            Some(a) => a,
            None => break,
        };
        let Ok(alen) = u16::try_from(answer.len()) else {
            break;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&alen.to_be_bytes());
        out.extend_from_slice(&answer);
        if let Err(e) = client.write_all(&out).await {
            summary.error = Some(format!("client write: {e}"));
            break;
        }
        summary.bytes_down += out.len() as u64;
    }
    let _ = client.shutdown().await;
    summary
}

/// The next length-prefixed message; `None` at a clean end between
/// messages.
async fn read_query(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let len = match client.read_u16().await {
        Ok(n) => usize::from(n),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut query = vec![0; len];
    client
        .read_exact(&mut query)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("truncated message: {e}")))?;
    Ok(Some(query))
}

/// The answer to one query; `None` ends the connection (a message that is
/// not DNS: nothing sensible can be answered).
pub(crate) async fn answer(
    ctx: &DnsContext,
    flow: &Flow,
    query: &[u8],
    recording: &SessionRecording,
    summary: &mut DnsSummary,
) -> Option<Vec<u8>> {
    let ask = async |query: &[u8]| upstream::ask(&ctx.settings.upstream, ctx.mark, query).await;
    answer_with(ctx, flow, query, recording, summary, ask).await
}

/// [`answer`], asking the upstream through `ask`.
async fn answer_with(
    ctx: &DnsContext,
    flow: &Flow,
    query: &[u8],
    recording: &SessionRecording,
    summary: &mut DnsSummary,
    ask: impl AsyncFnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Option<Vec<u8>> {
    summary.queries += 1;
    let (parsed, question) = match message::parse_query(query) {
        Ok(q) => q,
        Err(DnsError::Unsupported(why)) => {
            summary.denied += 1;
            warn!(flow_id = flow.id, "DNS query refused: {why}");
            let parsed = hickory_proto::op::Message::from_vec(query).ok()?;
            return Some(message::refusal(&parsed, ResponseCode::Refused));
        }
        Err(e) => {
            summary.denied += 1;
            warn!(flow_id = flow.id, "{e}; closing the connection");
            summary.error = Some(e.to_string());
            return None;
        }
    };
    let facts = FlowFacts {
        dst: flow.dst,
        pid: flow.pid,
        uid: flow.uid,
        gid: flow.gid,
        comm: &flow.comm,
        claims: ctx.job.as_ref().map(|j| &j.claims),
        names: &[],
        udp: false,
    };
    let decision = ctx.policy.resolve(&facts, &question.name);
    // Logged, counted and recorded as policy decided; audit mode only
    // changes what happens next, as for connections and statements.
    let verdict = if decision.allowed { "allow" } else { "deny" };
    crate::admin::metrics::dns_query(verdict, &decision.rule);
    if !decision.allowed && ctx.mode != Mode::Audit {
        summary.denied += 1;
        let code = match ctx.settings.denied_answer {
            DeniedAnswer::NxDomain => ResponseCode::NXDomain,
            DeniedAnswer::Refused => ResponseCode::Refused,
        };
        info!(flow_id = flow.id, name = %question.name, qtype = %question.qtype, decision = verdict, rule = %decision.rule, mode = %ctx.mode, answer = %code, "dns query");
        recording.record(Body::Dns {
            name: question.name,
            qtype: question.qtype,
            decision: verdict.into(),
            rule: decision.rule.to_string(),
            answer: code.to_string(),
            addresses: Vec::new(),
        });
        return Some(message::refusal(&parsed, code));
    }
    // Allowed, or denied in audit mode: asked upstream and learnt, so the
    // job's connections to the answer are decided (and audited) by name
    // as they would be once the policy allows it.
    let result = match ask(query).await {
        Ok(bytes) => message::parse_answer(&parsed, bytes).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let (bytes, code, addresses) = match result {
        Ok(a) => {
            let now = Instant::now();
            for (ip, ttl) in &a.addresses {
                ctx.names
                    .learn(flow.cgroup_id, *ip, &question.name, *ttl, now);
            }
            let shown = a
                .addresses
                .iter()
                .map(|(ip, ttl)| format!("{ip} ttl {ttl}"))
                .collect();
            (a.bytes, a.code, shown)
        }
        Err(e) => {
            warn!(flow_id = flow.id, name = %question.name, error = %e, "DNS upstream failed");
            (
                message::refusal(&parsed, ResponseCode::ServFail),
                format!("SERVFAIL ({e})"),
                Vec::new(),
            )
        }
    };
    info!(flow_id = flow.id, name = %question.name, qtype = %question.qtype, decision = verdict, rule = %decision.rule, mode = %ctx.mode, answer = %code, "dns query");
    recording.record(Body::Dns {
        name: question.name,
        qtype: question.qtype,
        decision: verdict.into(),
        rule: decision.rule.to_string(),
        answer: code,
        addresses,
    });
    Some(bytes)
}

#[cfg(test)]
mod tests;
