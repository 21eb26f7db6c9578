//! Unit tests: one query through the forwarder with a stand-in upstream: its answer, the names learnt and the `dns` event recorded, in enforce and audit mode.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    str::FromStr,
    sync::Arc,
    time::Instant,
};

use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};

use super::*;
use crate::{
    policy::Policy,
    protocols::dns::NameTable,
    recording::{Recorder, files},
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 80);

fn policy(dir: &Path, mode: &str) -> Policy {
    let path = dir.join("policy.toml");
    let text = format!(
        r#"
[daemon]
mode = "{mode}"

[dns]
upstream = ["10.0.0.2"]

[[target]]
name = "web"
hosts = ["web.corp"]
ports = [443]

[[rule]]
name = "no-web"
action = "deny"
targets = ["web"]
"#
    );
    std::fs::write(&path, text).unwrap();
    Policy::load(&path).unwrap()
}

fn flow() -> Flow {
    Flow {
        id: 1,
        peer: SocketAddr::from(([127, 0, 0, 1], 40_000)),
        dst: SocketAddr::from(([127, 0, 0, 53], 53)),
        pid: 42,
        uid: 1000,
        gid: 1000,
        comm: "curl".into(),
        cgroup_id: 7,
        netns_cookie: 1,
    }
}

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(99)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// What a resolver answers: `WEB` for whatever was asked.
fn upstream_answer(query: &[u8]) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_response_code(ResponseCode::NoError);
    for question in q.queries() {
        m.add_query(question.clone());
        m.add_answer(Record::from_rdata(
            question.name().clone(),
            300,
            RData::A(A(WEB)),
        ));
    }
    m.to_vec().unwrap()
}

/// What one query of `name` under `mode` does: the answer's code, whether
/// the upstream was asked, the names learnt for WEB, the summary, and the
/// recorded `dns` event's decision, rule and answer.
struct Outcome {
    code: ResponseCode,
    asked: bool,
    learnt: Vec<String>,
    denied: u64,
    recorded: (String, String, String),
}

fn context(policy: &Arc<Policy>) -> DnsContext {
    DnsContext {
        settings: policy.dns().unwrap().clone(),
        policy: policy.clone(),
        names: Arc::new(NameTable::default()),
        mark: 0,
        mode: policy.daemon().mode,
        job: None,
    }
}

async fn one_query(mode: &str, name: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let policy = Arc::new(policy(dir.path(), mode));
    let ctx = context(&policy);
    let settings = crate::recording::tests::settings(dir.path());
    let recorder = Recorder::start(&settings).unwrap();
    let recording = recorder.open(crate::recording::tests::start()).await;
    let id = recording.id().to_owned();
    let mut summary = DnsSummary::default();
    let mut asked = false;
    let ask = async |q: &[u8]| {
        asked = true;
        Ok(upstream_answer(q))
    };
    let bytes = answer_with(&ctx, &flow(), &query(name), &recording, &mut summary, ask)
        .await
        .expect("an answer");
    recording.close(crate::recording::tests::end());
    recorder.shutdown().await;

    let text = std::fs::read_to_string(files::find(&settings.dir, &id).unwrap()).unwrap();
    let dns: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].take())
        .filter(|e| e["type"] == "dns")
        .collect();
    assert_eq!(dns.len(), 1, "one dns event: {text}");
    let field = |k: &str| dns[0][k].as_str().unwrap_or_default().to_owned();
    Outcome {
        code: Message::from_vec(&bytes).unwrap().response_code(),
        asked,
        learnt: ctx
            .names
            .names(7, IpAddr::V4(WEB), Instant::now())
            .iter()
            .map(|n| n.to_string())
            .collect(),
        denied: summary.denied,
        recorded: (field("decision"), field("rule"), field("answer")),
    }
}

#[tokio::test]
async fn a_denied_name_is_refused_unasked_in_enforce_mode() {
    let o = one_query("enforce", "web.corp.").await;
    assert_eq!(o.code, ResponseCode::NXDomain);
    assert!(!o.asked, "a denied name never goes upstream");
    assert!(o.learnt.is_empty());
    assert_eq!(o.denied, 1);
    assert_eq!(
        o.recorded,
        ("deny".into(), "no-web".into(), "Non-Existent Domain".into())
    );
}

#[tokio::test]
async fn a_denied_name_is_answered_and_recorded_as_a_would_be_denial_in_audit_mode() {
    // The policy's verdict is the same in both modes: audit is applied
    // where the answer is made, as for connections and statements.
    let dir = tempfile::tempdir().unwrap();
    let audit = policy(dir.path(), "audit");
    let facts = FlowFacts {
        dst: flow().dst,
        pid: 42,
        uid: 1000,
        gid: 1000,
        comm: "curl",
        claims: None,
        names: &[],
        udp: false,
    };
    assert!(!audit.resolve(&facts, "web.corp").allowed);

    let o = one_query("audit", "web.corp.").await;
    assert_eq!(o.code, ResponseCode::NoError);
    assert!(o.asked, "forwarded upstream");
    assert_eq!(o.learnt, ["web.corp"], "and learnt, for the connection");
    assert_eq!(o.denied, 0, "nothing was refused");
    assert_eq!(
        o.recorded,
        ("deny".into(), "no-web".into(), "No Error".into())
    );
}

#[tokio::test]
async fn an_idle_or_stalled_tcp_connection_is_closed_after_the_idle_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let policy = Arc::new(policy(dir.path(), "enforce"));
    let ctx = Arc::new(context(&policy));
    let settings = crate::recording::tests::settings(dir.path());
    let recorder = Recorder::start(&settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Long enough that the first query is never late on a loaded machine.
    let idle = std::time::Duration::from_secs(1);

    // A query answered (a denied name: no upstream needed), then the start
    // of another that never completes: the wait restarts after each
    // answer and ends the connection, not the gateway's patience.
    let mut job = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (served, _) = listener.accept().await.unwrap();
    let recording = recorder.open(crate::recording::tests::start()).await;
    let serve = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let summary = serve_tcp_idle(ctx, &flow(), served, &recording, idle).await;
            recording.close(crate::recording::tests::end());
            summary
        }
    });
    let q = query("web.corp.");
    let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    job.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    job.read_exact(&mut len).await.unwrap();
    let mut answer = vec![0; usize::from(u16::from_be_bytes(len))];
    job.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        Message::from_vec(&answer).unwrap().response_code(),
        ResponseCode::NXDomain
    );
    job.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
    let summary = tokio::time::timeout(std::time::Duration::from_secs(10), serve)
        .await
        .expect("closed after the idle time")
        .unwrap();
    assert_eq!((summary.queries, summary.denied), (1, 1));
    let mut rest = Vec::new();
    job.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "nothing after the answer, then EOF: {rest:?}"
    );
    recorder.shutdown().await;
}
