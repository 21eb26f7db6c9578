//! One mediated PostgreSQL session, read like the protocol's flow chart:
//! startup (the job is trusted from the kernel's record, never asked for a
//! password) → upstream login with the policy's credentials → a loop that
//! decodes every message both ways, decides each statement, masks results
//! and records what happened.
//!
//! Denials travel through the upstream: a denied statement is replaced by
//! one that fails with a unique nonce in its error, and that error is
//! swapped for the gateway's own (SQLSTATE 42501, naming the rule). The
//! client therefore gets the error exactly where PostgreSQL would have put
//! it, in pipelines and in the extended protocol (which then skips to
//! Sync), and the transaction is aborted as a real error would abort it.
//! Nothing the policy has not seen is forwarded.
use std::{collections::HashMap, sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::either::Either;
use tracing::{Level, debug, info, warn};

use super::{
    PostgresContext,
    cancel::BackendKey,
    catalog::CatalogLogin,
    classify::Classification,
    codec::{
        self, CodecError, DataRow, Encode, ErrorFields, ErrorResponse, Frame, FrameDecoder,
        FrontendMessage, ObjectKind, RowDescription, StartupMessage, StartupPacket,
        read_startup_frame,
    },
    copy_out::{self, CopyRows},
    tls::{self, ClientStream},
    tracker::{Denial, Pending, Portal, PreparedStatement, Running, Tracker},
    upstream::{self, Route, Upstream, UpstreamError},
};
use crate::{
    approvals::{Ask, Held, HeldEvent, Requester, State as ApprovalState},
    flow::Flow,
    masking::{ColumnInfo, MaskedRow, ResultPlan},
    policy::{
        ApprovalRule, CopyOutMasked, Mode, SessionRules, StatementDecision, StatementVerdict,
    },
    recording::{Body, SessionRecording},
};

/// Stop reading a side while this much is queued for the other one.
const HIGH_WATER: usize = 1 << 20;
/// Bound on statements answered but not yet acknowledged (pipelining).
const MAX_PENDING: usize = 100_000;

/// What a session did, for the connection's flow event.
#[derive(Debug, Default)]
pub struct SessionSummary {
    pub role: String,
    pub database: String,
    pub statements: u64,
    pub denied: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub error: Option<String>,
}

/// Serves one client connection that policy routed to a PostgreSQL target.
pub async fn serve(
    ctx: Arc<PostgresContext>,
    flow: &Flow,
    client: TcpStream,
    recording: &SessionRecording,
) -> SessionSummary {
    let mut summary = SessionSummary::default();
    let max = ctx.target.max_message_bytes;
    let mut decoder = FrameDecoder::new(max);
    let mut cbuf = BytesMut::with_capacity(16 * 1024);

    let (mut client, startup) = match startup_with_tls(&ctx, client, &mut cbuf, &mut decoder).await
    {
        (Some(client), Ok(Some(startup))) => (client, startup),
        (client, Err(e)) => {
            summary.error = Some(e.clone());
            if let Some(mut client) = client {
                let _ = client.write_all(&fatal("08P01", &e)).await;
            }
            return summary;
        }
        (_, Ok(_)) => return summary,
    };
    let role = startup.user().unwrap_or_default().to_owned();
    let database = startup.database().unwrap_or(&role).to_owned();
    summary.role.clone_from(&role);
    summary.database.clone_from(&database);
    if let Err(why) = recording.healthy() {
        let message =
            format!("chokepoint: this session cannot be recorded, so it is refused: {why}");
        let _ = client.write_all(&fatal("58030", &message)).await;
        summary.error = Some(message);
        return summary;
    }

    let (upstream, rules, route) = match connect(&ctx, flow, &startup, &role, &database).await {
        Ok(u) => u,
        Err((code, message)) => {
            warn!(flow_id = flow.id, %role, %database, "{message}");
            let _ = client.write_all(&fatal(code, &message)).await;
            summary.error = Some(message);
            return summary;
        }
    };
    info!(
        flow_id = flow.id,
        target = %ctx.target.name,
        %role,
        %database,
        upstream = %upstream.addr,
        session = recording.id(),
        "postgres session start"
    );
    recording.record(Body::Login {
        role: role.clone(),
        database: database.clone(),
        upstream: upstream.addr.to_string(),
    });
    let backend = BackendKey {
        upstream: upstream.addr,
        pid: upstream.backend_pid,
        secret: upstream.backend_secret,
    };
    let ((pid, secret), _cancel_guard) = ctx.shared.cancel.register(backend);

    // The login the client sees: trust, the server's parameters, the
    // gateway's own cancel key, ready.
    let mut hello = BytesMut::new();
    put_message(&mut hello, b'R', &0i32.to_be_bytes());
    for p in &upstream.parameters {
        hello.extend_from_slice(p);
    }
    let mut key = pid.to_be_bytes().to_vec();
    key.extend_from_slice(&secret.to_be_bytes());
    put_message(&mut hello, b'K', &key);
    put_message(&mut hello, b'Z', &[upstream.status]);
    if let Err(e) = client.write_all(&hello).await {
        summary.error = Some(e.to_string());
        return summary;
    }

    let password = ctx
        .target
        .credentials
        .get(&role)
        .and_then(|c| c.read_password().ok())
        .unwrap_or_default();
    let mut session = Session {
        ctx: ctx.clone(),
        rules,
        flow,
        recording,
        login: (route, role.clone(), database.clone(), password),
        tracker: Tracker::default(),
        statements: HashMap::new(),
        portals: HashMap::new(),
        query_plan: None,
        masked_row: MaskedRow::default(),
        upstream_broken: false,
        copy: CopyState::Idle,
        copies_seen: 0,
        to_client: BytesMut::new(),
        to_upstream: BytesMut::new(),
        summary,
        terminated: false,
        held: None,
    };
    session.run(client, upstream, cbuf, decoder).await;
    info!(
        flow_id = flow.id,
        statements = session.summary.statements,
        denied = session.summary.denied,
        error = session.summary.error.as_deref().unwrap_or(""),
        "postgres session end"
    );
    session.summary
}

/// The startup phase, upgrading the client to TLS when it asks and the
/// target allows it. Returns the stream to go on with (`None` if the TLS
/// handshake failed, leaving nothing to answer on).
async fn startup_with_tls(
    ctx: &PostgresContext,
    mut tcp: TcpStream,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> (Option<ClientStream>, Result<Option<StartupMessage>, String>) {
    let acceptor = if ctx.target.client_tls {
        match ctx.shared.client_acceptor() {
            Ok(a) => Some(a),
            Err(e) => return (Some(Either::Left(tcp)), Err(e)),
        }
    } else {
        None
    };
    let step = client_startup(ctx, &mut tcp, buf, decoder, acceptor.is_some()).await;
    let Some(acceptor) = acceptor.filter(|_| matches!(step, Ok(StartupStep::UpgradeTls))) else {
        return (Some(Either::Left(tcp)), step.map(StartupStep::into_message));
    };
    if let Err(e) = tcp.write_all(b"S").await {
        return (None, Err(e.to_string()));
    }
    // Bytes sent after the SSLRequest but before the handshake were never
    // encrypted; taking them as part of the session would let someone on
    // the path inject them (CVE-2021-23214).
    if !buf.is_empty() {
        return (
            Some(Either::Left(tcp)),
            Err("unencrypted data after the TLS request".into()),
        );
    }
    let mut client = match acceptor.accept(tcp).await {
        Ok(tls) => Either::Right(tls),
        Err(e) => return (None, Err(format!("client TLS handshake failed: {e}"))),
    };
    let step = client_startup(ctx, &mut client, buf, decoder, false).await;
    (Some(client), step.map(StartupStep::into_message))
}

/// Where the startup phase ended.
enum StartupStep {
    Startup(StartupMessage),
    /// Closed, or a cancel request (which is forwarded, then closed).
    Closed,
    /// The client asked for TLS and may have it.
    UpgradeTls,
}

impl StartupStep {
    /// The startup message; a TLS upgrade is only returned where it was
    /// offered, so elsewhere it reads as a closed connection.
    fn into_message(self) -> Option<StartupMessage> {
        match self {
            Self::Startup(m) => Some(m),
            Self::Closed | Self::UpgradeTls => None,
        }
    }
}

/// Startup phase: GSS encryption is declined, SSL is declined unless
/// `offer_tls` (the job talks to the gateway over loopback), cancel
/// requests are forwarded, and the startup message is checked for
/// parameters that would get around policy.
async fn client_startup<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &PostgresContext,
    client: &mut S,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
    offer_tls: bool,
) -> Result<StartupStep, String> {
    loop {
        let Some(frame) = read_startup_frame(client, buf, decoder)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(StartupStep::Closed);
        };
        match StartupPacket::parse(&frame).map_err(|e| e.to_string())? {
            StartupPacket::SslRequest if offer_tls => return Ok(StartupStep::UpgradeTls),
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.write_all(b"N").await.map_err(|e| e.to_string())?;
            }
            StartupPacket::CancelRequest(cancel) => {
                if let Ok(secret) = <[u8; 4]>::try_from(cancel.secret_key.as_ref()) {
                    ctx.shared
                        .cancel
                        .forward(cancel.pid, i32::from_be_bytes(secret), ctx.mark)
                        .await;
                }
                return Ok(StartupStep::Closed);
            }
            StartupPacket::Startup(startup) => {
                if startup.major != 3 {
                    return Err(format!(
                        "unsupported frontend protocol {}.{}: chokepoint speaks 3.0",
                        startup.major, startup.minor
                    ));
                }
                // Newer minor versions and _pq_ extensions: tell the client
                // what we speak, as the server would.
                let unknown: Vec<&str> = startup
                    .params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| k.starts_with("_pq_."))
                    .collect();
                if startup.minor > 0 || !unknown.is_empty() {
                    let mut body = 0i32.to_be_bytes().to_vec();
                    body.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
                    for name in &unknown {
                        body.extend_from_slice(name.as_bytes());
                        body.push(0);
                    }
                    let mut out = BytesMut::new();
                    put_message(&mut out, b'v', &body);
                    client.write_all(&out).await.map_err(|e| e.to_string())?;
                }
                if startup.user().is_none_or(str::is_empty) {
                    return Err(
                        "no user in the startup message: name the database role to use".into(),
                    );
                }
                if startup
                    .param("replication")
                    .is_some_and(|v| !v.eq_ignore_ascii_case("false") && v != "0")
                {
                    return Err("replication connections are not allowed through chokepoint".into());
                }
                if let Some(reason) = unsafe_startup_setting(&startup) {
                    return Err(reason);
                }
                if startup
                    .param("options")
                    .is_some_and(|v| !v.trim().is_empty())
                {
                    return Err("the startup parameter \"options\" is not allowed through chokepoint: it can change the role and settings before policy sees a statement".into());
                }
                return Ok(StartupStep::Startup(startup));
            }
        }
    }
}

/// Client encodings whose multi-byte characters can contain a backslash or
/// quote byte: the server would split such text into statements differently
/// from the gateway's parser.
const UNSAFE_ENCODINGS: &[&str] = &[
    "sjis", "shiftjis", "mskanji", "win932", "cp932", "big5", "win950", "cp950", "gbk", "win936",
    "cp936", "gb18030", "uhc", "win949", "cp949", "johab",
];

/// Startup settings that would make the server read SQL, or resolve table
/// names, differently from what policy decided on.
fn unsafe_startup_setting(startup: &StartupMessage) -> Option<String> {
    let normalise = |v: &str| v.to_ascii_lowercase().replace(['_', '-'], "");
    if let Some(enc) = startup.param("client_encoding")
        && UNSAFE_ENCODINGS.contains(&normalise(enc).as_str())
    {
        return Some(format!(
            "client_encoding {enc} is not allowed through chokepoint: use UTF8"
        ));
    }
    if startup
        .param("standard_conforming_strings")
        .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "1"))
    {
        return Some("standard_conforming_strings must stay on through chokepoint".into());
    }
    if startup.param("search_path").is_some() {
        return Some("the startup parameter search_path is not allowed through chokepoint: table rules match by schema".into());
    }
    None
}

/// Whether a statement changes `search_path`. Table rules match unqualified
/// names as schema public, so a changed search path would let
/// `DELETE FROM invoices` reach `billing.invoices` unseen.
fn changes_search_path(sql: &str, classification: &Classification) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("search_path")
        && (lower.contains("set_config")
            || classification
                .statements
                .iter()
                .any(|s| s.class != super::classify::StatementClass::Read))
}

/// Role check, credentials, upstream login. Errors come with the SQLSTATE
/// the client should see and a message naming the target.
async fn connect(
    ctx: &PostgresContext,
    flow: &Flow,
    startup: &StartupMessage,
    role: &str,
    database: &str,
) -> Result<(Upstream, SessionRules, Route), (&'static str, String)> {
    let target = &ctx.target.name;
    // Only rules that grant this role may allow its statements.
    let rules = ctx
        .rules
        .for_role(role)
        .map_err(|e| ("28000", format!("chokepoint: {e}")))?;
    let credential = ctx.target.credentials.get(role).ok_or_else(|| {
        (
            "28000",
            format!("chokepoint: target {target} has no credentials for role {role:?}"),
        )
    })?;
    let password = credential.read_password().map_err(|e| {
        (
            "28000",
            format!(
                "chokepoint: cannot read the credentials of role {role:?} for target {target}: {e}"
            ),
        )
    })?;
    let addr = ctx.target.upstream.unwrap_or(flow.dst);
    let tls_setup = |e: String| {
        (
            "08001",
            format!("chokepoint: TLS to target {target} cannot be set up: {e}"),
        )
    };
    let tls = match ctx.shared.upstream_tls(&ctx.target).map_err(tls_setup)? {
        Some(config) => Some((
            config,
            tls::server_name(&ctx.target.tls, addr).map_err(tls_setup)?,
        )),
        None => None,
    };
    let route = Route {
        addr,
        mark: ctx.mark,
        tls,
    };
    let params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "user" | "database" | "options" | "replication")
                && !k.starts_with("_pq_.")
        })
        .cloned()
        .collect();
    let upstream = upstream::login(
        &route,
        role,
        database,
        &password,
        &params,
        ctx.target.max_message_bytes,
    )
    .await
    .map_err(|e| {
        let code = match e {
            UpstreamError::Unreachable { .. } => "08006",
            UpstreamError::Rejected { .. } => "28P01",
            UpstreamError::Tls { .. } => "08001",
            _ => "08P01",
        };
        (code, format!("chokepoint: target {target}: {e}"))
    })?;
    Ok((upstream, rules, route))
}

struct Session<'a> {
    ctx: Arc<PostgresContext>,
    /// The flow's rules narrowed to the session's role.
    rules: SessionRules,
    flow: &'a Flow,
    recording: &'a SessionRecording,
    /// Upstream route, role, database and password, for catalog lookups.
    login: (Route, String, String, String),
    tracker: Tracker,
    statements: HashMap<String, PreparedStatement>,
    portals: HashMap<String, Portal>,
    /// Plan of the simple-protocol result being streamed.
    query_plan: Option<Arc<ResultPlan>>,
    /// Buffers of the row being masked, reused row after row.
    masked_row: MaskedRow,
    /// The upstream sent something the session cannot pass on safely; it ends.
    upstream_broken: bool,
    copy: CopyState,
    /// COPY TO STDOUT responses seen in the current query string.
    copies_seen: usize,
    to_client: BytesMut,
    to_upstream: BytesMut,
    summary: SessionSummary,
    terminated: bool,
    /// The statement waiting for approval; nothing after it is decoded
    /// until it is decided.
    held: Option<HeldStatement>,
}

enum Step {
    Continue,
    End,
}

/// What policy made of a statement.
enum Decided {
    Run(Running),
    /// The ErrorResponse to answer with.
    Refuse(Bytes),
    Hold(Box<HoldAsk>),
}

/// A statement a rule holds for approval, before the request exists.
struct HoldAsk {
    /// How it runs once approved.
    running: Running,
    rule: String,
    reason: String,
    /// Password literals redacted.
    shown: String,
    approval: Arc<ApprovalRule>,
}

/// Which message carried the held statement, and so how it is answered.
enum HeldKind {
    Query,
    Parse { name: String },
}

struct HeldStatement {
    frame: Frame,
    kind: HeldKind,
    running: Running,
    shown: String,
    rule: String,
    held: Held,
}

async fn next_held(held: &mut Option<HeldStatement>) -> HeldEvent {
    match held {
        Some(h) => h.held.next().await,
        None => std::future::pending().await,
    }
}

impl Session<'_> {
    async fn run(
        &mut self,
        client: ClientStream,
        upstream: Upstream,
        mut cbuf: BytesMut,
        mut decoder: FrameDecoder,
    ) {
        let (mut cr, mut cw) = tls::split(client);
        let (mut ur, mut uw) = tls::split(upstream.stream);
        let mut ubuf = upstream.leftover;
        let mut udecoder = FrameDecoder::new(self.ctx.target.max_message_bytes);
        // Frames already buffered (pipelined right after startup) first.
        if let Step::End = self.drain_client(&mut cbuf, &mut decoder).await {
            self.flush_all(&mut cw, &mut uw).await;
            return;
        }
        loop {
            // While a statement is held, reading goes on only to notice
            // the client leaving; what it sends waits in `cbuf`.
            let read_client = self.to_upstream.len() < HIGH_WATER
                && self.tracker.pending.len() < MAX_PENDING
                && !self.terminated
                && (self.held.is_none() || cbuf.len() < HIGH_WATER);
            let read_upstream = self.to_client.len() < HIGH_WATER;
            tokio::select! {
                r = uw.write_buf(&mut self.to_upstream), if !self.to_upstream.is_empty() => {
                    if let Err(e) = r { self.summary.error = Some(format!("upstream write: {e}")); break; }
                }
                r = cw.write_buf(&mut self.to_client), if !self.to_client.is_empty() => {
                    if let Err(e) = r { self.summary.error = Some(format!("client write: {e}")); break; }
                }
                r = cr.read_buf(&mut cbuf), if read_client => match r {
                    Ok(0) => break,
                    Ok(n) => {
                        self.summary.bytes_up += n as u64;
                        if let Step::End = self.drain_client(&mut cbuf, &mut decoder).await { break; }
                    }
                    Err(e) => { self.summary.error = Some(format!("client read: {e}")); break; }
                },
                r = ur.read_buf(&mut ubuf), if read_upstream => match r {
                    Ok(0) => {
                        if !self.terminated {
                            self.summary.error = Some("upstream closed the connection".into());
                        }
                        break;
                    }
                    Ok(_) => {
                        if let Step::End = self.drain_upstream(&mut ubuf, &mut udecoder).await { break; }
                    }
                    Err(e) => { self.summary.error = Some(format!("upstream read: {e}")); break; }
                },
                event = next_held(&mut self.held), if self.held.is_some() => {
                    if self.on_held(event)
                        && let Step::End = self.drain_client(&mut cbuf, &mut decoder).await
                    {
                        break;
                    }
                }
                else => break,
            }
        }
        if let Some(held) = self.held.take() {
            self.recording.record(Body::Approval {
                id: held.held.id().to_owned(),
                event: "cancelled".into(),
                by: None,
                detail: "the client disconnected before a decision".into(),
            });
            // Dropping the handle cancels the request in the store.
            drop(held);
        }
        self.flush_all(&mut cw, &mut uw).await;
    }

    async fn flush_all(
        &mut self,
        cw: &mut (impl AsyncWrite + Unpin),
        uw: &mut (impl AsyncWrite + Unpin),
    ) {
        let _ = uw.write_all(&self.to_upstream).await;
        let _ = cw.write_all(&self.to_client).await;
        self.summary.bytes_down += self.to_client.len() as u64;
        let _ = uw.shutdown().await;
        let _ = cw.shutdown().await;
    }

    async fn drain_client(&mut self, buf: &mut BytesMut, decoder: &mut FrameDecoder) -> Step {
        loop {
            if self.held.is_some() {
                return Step::Continue;
            }
            match decoder.decode(buf) {
                Ok(Some(frame)) => {
                    if let Step::End = self.on_client(frame).await {
                        return Step::End;
                    }
                }
                Ok(None) => return Step::Continue,
                Err(e) => return self.protocol_violation(&e),
            }
        }
    }

    async fn drain_upstream(&mut self, buf: &mut BytesMut, decoder: &mut FrameDecoder) -> Step {
        loop {
            match decoder.decode(buf) {
                Ok(Some(frame)) => {
                    self.on_upstream(frame).await;
                    if self.upstream_broken {
                        return Step::End;
                    }
                }
                Ok(None) => return Step::Continue,
                Err(e) => {
                    self.summary.error = Some(format!("upstream sent a malformed message: {e}"));
                    self.to_client.extend_from_slice(&fatal(
                        "08P01",
                        "chokepoint: the upstream server sent a malformed message",
                    ));
                    return Step::End;
                }
            }
        }
    }

    fn protocol_violation(&mut self, e: &CodecError) -> Step {
        let message = format!("chokepoint: malformed message from the client: {e}");
        warn!(flow_id = self.flow.id, "{message}");
        self.summary.error = Some(message.clone());
        self.to_client.extend_from_slice(&fatal("08P01", &message));
        Step::End
    }

    /// One client message: decide, then forward it or its denial.
    async fn on_client(&mut self, frame: Frame) -> Step {
        let message = match FrontendMessage::parse(&frame) {
            Ok(m) => m,
            Err(e) => return self.protocol_violation(&e),
        };
        match message {
            FrontendMessage::Query(q) => {
                let sql: Arc<str> = Arc::from(q.sql);
                match self.decide_sql(&sql) {
                    Decided::Run(running) => self.release(&frame, HeldKind::Query, running, false),
                    Decided::Refuse(error) => self.refuse(HeldKind::Query, error),
                    Decided::Hold(ask) => self.hold(frame, HeldKind::Query, *ask).await,
                }
            }
            FrontendMessage::Parse(p) => {
                let sql: Arc<str> = Arc::from(p.sql);
                let kind = HeldKind::Parse {
                    name: p.name.to_owned(),
                };
                match self.decide_sql(&sql) {
                    Decided::Run(running) => self.release(&frame, kind, running, false),
                    Decided::Refuse(error) => self.refuse(kind, error),
                    Decided::Hold(ask) => self.hold(frame, kind, *ask).await,
                }
            }
            FrontendMessage::Bind(b) => {
                // Re-decide under the current policy: a reload may have
                // revoked what the statement was prepared under.
                let verdict = self.statements.get(b.statement).and_then(|s| {
                    let c = s.classification.clone()?;
                    Some((s.sql.clone(), c, s.approved))
                });
                let refused = verdict.and_then(|(sql, classification, approved)| {
                    match self.decide_classified(&sql, &classification) {
                        Decided::Run(_) => None,
                        Decided::Refuse(error) => Some(error),
                        // Approved when it was prepared: that approval
                        // was for exactly this text.
                        Decided::Hold(_) if approved => None,
                        Decided::Hold(ask) => Some(deny_error(
                            &ask.rule,
                            &format!("statement needs approval by rule {} ({}), which it did not need when it was prepared: prepare it again to ask for approval", ask.rule, ask.reason),
                            &ask.shown,
                        )),
                    }
                });
                if let Some(error) = refused {
                    let nonce = self.deny(error);
                    push_bind(&mut self.to_upstream, b.portal, &nonce);
                } else {
                    self.portals.insert(
                        b.portal.to_owned(),
                        Portal {
                            statement: b.statement.to_owned(),
                        },
                    );
                    self.forward(&frame);
                }
                self.tracker.push(Pending::Bind);
            }
            FrontendMessage::Describe(d) => {
                let (portal, statement) = match d.kind {
                    ObjectKind::Portal => (Some(d.name.to_owned()), None),
                    ObjectKind::Statement => (None, Some(d.name.to_owned())),
                };
                self.forward(&frame);
                self.tracker.push(Pending::Describe {
                    portal,
                    statement,
                    swallow: false,
                });
            }
            FrontendMessage::Execute(e) => {
                let portal = e.portal.to_owned();
                // Masking needs this Execute's row layout. Asking right
                // before it is the only answer that cannot belong to an
                // earlier or later Bind of the same portal name.
                if !self.ctx.masking.is_empty() {
                    push_describe_portal(&mut self.to_upstream, &portal);
                    self.tracker.push(Pending::Describe {
                        portal: Some(portal.clone()),
                        statement: None,
                        swallow: true,
                    });
                }
                let running = self
                    .portals
                    .get(&portal)
                    .and_then(|p| self.statements.get(&p.statement))
                    .map(|s| Running {
                        sql: s.sql.clone(),
                        classification: s.classification.clone(),
                        class: class_names(s.classification.as_deref()),
                        rule: Arc::from(""),
                        started: Instant::now(),
                        rows: 0,
                        masked: false,
                        execute: true,
                        columns: Vec::new(),
                        sample: Default::default(),
                    });
                self.forward(&frame);
                self.tracker.push(Pending::Execute {
                    portal,
                    running,
                    layout: None,
                    plan: None,
                });
            }
            FrontendMessage::Close(c) => {
                match c.kind {
                    ObjectKind::Portal => self.portals.remove(c.name),
                    ObjectKind::Statement => {
                        self.statements.remove(c.name);
                        None
                    }
                };
                self.forward(&frame);
                self.tracker.push(Pending::Close);
            }
            FrontendMessage::Sync => {
                self.forward(&frame);
                self.tracker.push(Pending::Sync);
            }
            FrontendMessage::Flush
            | FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail(_) => {
                // COPY data belongs to a COPY statement already decided; the
                // server rejects copy messages outside copy-in mode.
                self.forward(&frame);
            }
            FrontendMessage::FunctionCall(_) => {
                let error = deny_error(
                    "function-call",
                    "the fastpath FunctionCall message is not allowed: call the function from SQL so policy can see it",
                    "",
                );
                let nonce = self.deny(error);
                push_query(&mut self.to_upstream, &format!("SELECT \"{nonce}\""));
                self.tracker.push(Pending::Query(None));
            }
            FrontendMessage::Terminate => {
                self.forward(&frame);
                self.terminated = true;
                return Step::End;
            }
        }
        Step::Continue
    }

    fn forward(&mut self, frame: &Frame) {
        frame.encode_into(&mut self.to_upstream);
    }

    /// Registers a denial and returns the nonce the upstream error will carry.
    fn deny(&mut self, error: Bytes) -> String {
        self.summary.denied += 1;
        let nonce = format!(
            "chokepoint_denied_{:08x}{:08x}",
            super::cancel::random_i32(),
            super::cancel::random_i32()
        );
        // The denial belongs to the batch ending at the next sync point.
        let sync_point = self.tracker.syncs_sent + 1;
        self.tracker.denials.push_back(Denial {
            nonce: nonce.clone(),
            error,
            sync_point,
        });
        nonce
    }

    /// Classifies and decides SQL text.
    fn decide_sql(&mut self, sql: &Arc<str>) -> Decided {
        self.summary.statements += 1;
        match self.ctx.shared.classifier.classify(sql) {
            Ok(classification) => self.decide_classified(sql, &classification),
            Err(e) => {
                let redacted = super::classify::redact_passwords(sql);
                info!(flow_id = self.flow.id, statement = %redacted, decision = "deny", rule = "unparsable", reason = %e, "statement");
                self.recording.record(Body::Statement {
                    text: redacted.into_owned(),
                    class: String::new(),
                    decision: "deny".into(),
                    rule: "unparsable".into(),
                    reason: e.to_string(),
                });
                Decided::Refuse(deny_error(
                    "unparsable",
                    &format!("statement denied: {e}"),
                    "",
                ))
            }
        }
    }

    fn decide_classified(&self, sql: &Arc<str>, classification: &Arc<Classification>) -> Decided {
        // Fail closed: nothing is forwarded that the recording cannot hold.
        if let Err(why) = self.recording.healthy() {
            warn!(
                flow_id = self.flow.id,
                "statement refused: recording failed: {why}"
            );
            return Decided::Refuse(deny_error(
                "recording",
                &format!("statement refused: the session recording cannot be written ({why})"),
                "",
            ));
        }
        let mut decision = self.rules.decide_all(classification);
        // With copy_out_masked = "deny", COPY … TO STDOUT never runs on a
        // target with masking rules; with "mask" its rows are masked as
        // they stream (see `copy_out_rows`).
        if decision.verdict == StatementVerdict::Allow
            && self.ctx.copy_out_masked == CopyOutMasked::Deny
            && !self.ctx.masking.is_empty()
            && classification
                .statements
                .iter()
                .any(|s| s.command == "COPY")
            && copy_out::copy_outs(sql).map_or(true, |c| !c.is_empty())
        {
            decision = StatementDecision {
                verdict: StatementVerdict::Deny,
                rule: Arc::from("copy-out-masked"),
                reason: "COPY … TO STDOUT of a target with masking rules is denied (copy_out_masked = \"deny\"): select the rows instead so they can be masked".into(),
                statement_index: 0,
            };
        }
        if decision.verdict == StatementVerdict::Allow && changes_search_path(sql, classification) {
            decision = StatementDecision {
                verdict: StatementVerdict::Deny,
                rule: Arc::from("search-path"),
                reason: "changing search_path is not allowed through chokepoint: qualify table names instead".into(),
                statement_index: 0,
            };
        }
        let class = class_names(Some(classification));
        let redacted = super::classify::redact_passwords(sql);
        let audit = self.ctx.mode == Mode::Audit;
        // The recording holds every statement; the daemon log only needs
        // the ones policy stopped (or would have, in audit mode), and a log
        // line per allowed statement costs more than the rest of its path.
        macro_rules! statement_event {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    flow_id = self.flow.id,
                    statement = %redacted,
                    class = %class,
                    decision = %decision.verdict,
                    rule = %decision.rule,
                    reason = %decision.reason,
                    mode = %self.ctx.mode,
                    "statement"
                )
            };
        }
        if decision.verdict == StatementVerdict::Allow {
            statement_event!(Level::DEBUG);
        } else {
            statement_event!(Level::INFO);
        }
        self.recording.record(Body::Statement {
            text: redacted.clone().into_owned(),
            class: class.clone(),
            decision: decision.verdict.to_string(),
            rule: decision.rule.to_string(),
            reason: decision.reason.clone(),
        });
        let running = Running {
            sql: sql.clone(),
            classification: Some(Arc::clone(classification)),
            class,
            rule: decision.rule.clone(),
            started: Instant::now(),
            rows: 0,
            masked: false,
            execute: false,
            columns: Vec::new(),
            sample: Default::default(),
        };
        if decision.verdict == StatementVerdict::Allow || audit {
            return Decided::Run(running);
        }
        if decision.verdict == StatementVerdict::Approve
            && let Some(approval) = self.rules.approval(&decision.rule)
        {
            return Decided::Hold(Box::new(HoldAsk {
                running,
                rule: decision.rule.to_string(),
                reason: decision.reason,
                shown: redacted.into_owned(),
                approval: approval.clone(),
            }));
        }
        let message = format!(
            "statement denied by rule {}: {}",
            decision.rule, decision.reason
        );
        Decided::Refuse(deny_error(&decision.rule, &message, &redacted))
    }

    /// Sends a decided statement on: forwards it and tracks its answer.
    /// `approved`: it was held and approved (a prepared one keeps that).
    fn release(&mut self, frame: &Frame, kind: HeldKind, running: Running, approved: bool) {
        match kind {
            HeldKind::Query => {
                self.forward(frame);
                self.tracker.push(Pending::Query(Some(running)));
            }
            HeldKind::Parse { name } => {
                // Classified once here; Bind reuses it.
                self.statements.insert(
                    name,
                    PreparedStatement {
                        sql: running.sql,
                        classification: running.classification,
                        approved,
                    },
                );
                self.forward(frame);
                self.tracker.push(Pending::Parse);
            }
        }
    }

    /// Answers a statement with `error` in its place in the stream.
    fn refuse(&mut self, kind: HeldKind, error: Bytes) {
        let nonce = self.deny(error);
        match kind {
            HeldKind::Query => {
                push_query(&mut self.to_upstream, &format!("SELECT \"{nonce}\""));
                self.tracker.push(Pending::Query(None));
            }
            HeldKind::Parse { name } => {
                // Same statement name, so a later Bind/Execute of it fails
                // upstream as "does not exist".
                push_parse(&mut self.to_upstream, &name, &format!("SELECT \"{nonce}\""));
                self.statements.remove(&name);
                self.tracker.push(Pending::Parse);
            }
        }
    }

    /// The job's identity as approvals and grants know it: the bound CI
    /// job, else the process's uid.
    fn identity(&self) -> String {
        if let Some(job) = &self.ctx.job {
            return job.describe();
        }
        let uid = self.flow.uid;
        match nix::unistd::User::from_uid(uid.into()) {
            Ok(Some(user)) => format!("uid {uid} ({})", user.name),
            _ => format!("uid {uid}"),
        }
    }

    /// A statement a rule holds: runs at once under a grant, else waits
    /// for a decision while the session keeps serving the upstream.
    async fn hold(&mut self, frame: Frame, kind: HeldKind, ask: HoldAsk) {
        let Some(approvals) = self.ctx.approvals.clone() else {
            let message = format!(
                "statement needs approval by rule {}: {} (this gateway runs no approval service, so it is denied)",
                ask.rule, ask.reason
            );
            return self.refuse(kind, deny_error(&ask.rule, &message, &ask.shown));
        };
        let identity = self.identity();
        let target = self.rules.target().to_owned();
        if let Some(grant) = approvals
            .grant(&identity, &target, &ask.running.class)
            .await
        {
            let by: Vec<&str> = grant.votes.iter().map(|v| v.by.as_str()).collect();
            self.recording.record(Body::Approval {
                id: grant.id.clone(),
                event: "grant_used".into(),
                by: Some(by.join(", ")),
                detail: format!(
                    "class {} on {target} granted until {}",
                    grant.class,
                    grant.grant_until.as_deref().unwrap_or("?")
                ),
            });
            info!(flow_id = self.flow.id, id = %grant.id, "statement runs under an approval grant");
            self.release(&frame, kind, ask.running, true);
            return;
        }
        let request = Ask {
            who: Requester {
                identity,
                uid: self.flow.uid,
                pid: self.flow.pid,
                comm: self.flow.comm.clone(),
                cgroup_id: self.flow.cgroup_id,
                session: self.recording.id().to_owned(),
            },
            target,
            role: self.login.1.clone(),
            database: self.login.2.clone(),
            sql: ask.running.sql.to_string(),
            shown: ask.shown.clone(),
            class: ask.running.class.clone(),
            rule: ask.rule.clone(),
            reason: ask.reason.clone(),
            approval: ask.approval.clone(),
        };
        match approvals.hold(request).await {
            Err(e) => {
                warn!(flow_id = self.flow.id, error = %e, "cannot create an approval request");
                self.recording.record(Body::Approval {
                    id: String::new(),
                    event: "failed".into(),
                    by: None,
                    detail: e.to_string(),
                });
                let message = format!(
                    "statement needs approval by rule {} ({}), but the request could not be stored: {e}",
                    ask.rule, ask.reason
                );
                self.refuse(kind, deny_error(&ask.rule, &message, &ask.shown));
            }
            Ok(held) => {
                let r = &held.request;
                let id = &r.id;
                self.recording.record(Body::Approval {
                    id: id.clone(),
                    event: "requested".into(),
                    by: None,
                    detail: format!(
                        "rule {}: {}; approvers {}; expires {}; digest {}",
                        r.rule,
                        r.reason,
                        r.approvers.join(", "),
                        r.expires,
                        r.digest
                    ),
                });
                let message = format!(
                    "chokepoint: waiting for approval {id}: run \"chokepoint approvals approve {id}\""
                );
                let detail = format!(
                    "rule {}: {}; approvers: {}; expires {}",
                    r.rule,
                    r.reason,
                    r.approvers.join(", "),
                    r.expires
                );
                let _ = ErrorFields {
                    severity: codec::Severity::Notice,
                    code: "00000",
                    message: &message,
                    detail: Some(&detail),
                    hint: None,
                }
                .encode_notice_into(&mut self.to_client);
                self.held = Some(HeldStatement {
                    frame,
                    kind,
                    running: ask.running,
                    shown: ask.shown,
                    rule: ask.rule,
                    held,
                });
            }
        }
    }

    /// One event of the held statement; true once it is decided and the
    /// client's next messages may be read.
    fn on_held(&mut self, event: HeldEvent) -> bool {
        let request = match event {
            HeldEvent::Notified { url, error } => {
                let (event, detail) = match error {
                    None => ("notified", url),
                    Some(e) => ("notify_failed", format!("{url}: {e}")),
                };
                if let Some(h) = &self.held {
                    self.recording.record(Body::Approval {
                        id: h.held.id().to_owned(),
                        event: event.into(),
                        by: None,
                        detail,
                    });
                }
                return false;
            }
            HeldEvent::Ended(request) => *request,
        };
        let Some(held) = self.held.take() else {
            return true;
        };
        let by: Vec<&str> = request.votes.iter().map(|v| v.by.as_str()).collect();
        let by = (!by.is_empty()).then(|| by.join(", "));
        let id = request.id.clone();
        let approved = request.state == ApprovalState::Approved
            && request.digest == crate::approvals::digest(&held.running.sql);
        let detail = if approved {
            let comments: Vec<String> = request
                .votes
                .iter()
                .filter_map(|v| v.text.as_ref().map(|t| format!("{}: {t}", v.by)))
                .collect();
            match &request.grant_until {
                Some(until) => format!("{}; grant until {until}", comments.join("; ")),
                None => comments.join("; "),
            }
        } else {
            request.outcome()
        };
        self.recording.record(Body::Approval {
            id: id.clone(),
            event: request.state.to_string(),
            by,
            detail,
        });
        info!(flow_id = self.flow.id, id = %id, state = %request.state, "held statement decided");
        let HeldStatement {
            frame,
            kind,
            running,
            shown,
            rule,
            held: _handle,
        } = held;
        if approved {
            self.release(&frame, kind, running, true);
        } else {
            let message = format!(
                "statement not approved ({id}, rule {rule}): {}",
                request.outcome()
            );
            self.refuse(kind, deny_error(&rule, &message, &shown));
        }
        true
    }

    /// One upstream message: track, mask, forward.
    async fn on_upstream(&mut self, frame: Frame) {
        match frame.tag() {
            b'Z' => {
                if let Some(Pending::Query(Some(running))) = self.tracker.ready() {
                    self.complete(running, "");
                }
                self.query_plan = None;
                self.copies_seen = 0;
            }
            b'H' => match self.copy_out_rows().await {
                Ok(Some(rows)) => self.copy = CopyState::Masking(rows),
                Ok(None) => self.copy = CopyState::Idle,
                Err(why) => return self.refuse_copy_out(&why),
            },
            b'd' => match &mut self.copy {
                CopyState::Idle => self.count_row(false),
                CopyState::Refused => return,
                CopyState::Masking(rows) => match rows.mask(frame.body()) {
                    Ok(masked) => {
                        self.count_row(masked.is_some());
                        if let Some(masked) = masked {
                            put_message(&mut self.to_client, b'd', &masked);
                            self.summary.bytes_down += masked.len() as u64 + 5;
                            return;
                        }
                    }
                    Err(why) => return self.refuse_copy_out(&why),
                },
            },
            b'c' => {
                if let CopyState::Refused = self.copy {
                    return;
                }
                self.copy = CopyState::Idle;
            }
            b'E' => {
                self.copy = CopyState::Idle;
                let parsed = ErrorResponse::parse(frame.body());
                let message = parsed
                    .as_ref()
                    .ok()
                    .and_then(|e| e.message())
                    .unwrap_or("")
                    .to_owned();
                let replacement = self.tracker.take_denial(&message);
                // Extended protocol: the server now skips to Sync.
                for skipped in self.tracker.skip_to_sync() {
                    if let Pending::Execute {
                        running: Some(r), ..
                    } = skipped
                    {
                        self.complete(r, &message);
                    }
                }
                if let Some(Pending::Query(running)) = self.tracker.pending.front_mut()
                    && let Some(running) = running.take()
                {
                    self.complete(running, &message);
                }
                match replacement {
                    Some(error) => self.to_client.extend_from_slice(&error),
                    None => frame.encode_into(&mut self.to_client),
                }
                return;
            }
            b'1' | b'2' | b'3' => {
                self.tracker.pending.pop_front();
            }
            b'T' => {
                let body = frame.body().clone();
                match self.tracker.pending.front() {
                    Some(Pending::Describe { swallow, .. }) => {
                        let swallow = *swallow;
                        self.tracker.pending.pop_front();
                        if swallow {
                            // Ours: the layout of the Execute that follows.
                            self.note_columns(&body);
                            if let Some(Pending::Execute { layout, .. }) =
                                self.tracker.pending.front_mut()
                            {
                                *layout = Some(body);
                            }
                            return;
                        }
                    }
                    _ => {
                        self.note_columns(&body);
                        self.query_plan = self.plan_for(&body).await;
                    }
                }
            }
            b'n' => {
                if let Some(Pending::Describe { swallow, .. }) = self.tracker.pending.front() {
                    let swallow = *swallow;
                    self.tracker.pending.pop_front();
                    if swallow {
                        return;
                    }
                }
            }
            b'D' => {
                let plan = match self.tracker.pending.front() {
                    Some(Pending::Execute { .. }) => self.execute_plan().await,
                    _ => self.query_plan.clone(),
                };
                self.count_row(plan.as_deref().is_some_and(|p| !p.is_noop()));
                if let Some(plan) = plan
                    && !plan.is_noop()
                {
                    return self.forward_masked(&plan, &frame);
                }
                if self.sampling()
                    && let Ok(row) = DataRow::parse(frame.body())
                {
                    self.sample_values(row.columns());
                }
            }
            b'C' | b'I' | b's' => {
                // The end of a refused COPY was already answered with an error.
                let refused = matches!(
                    std::mem::replace(&mut self.copy, CopyState::Idle),
                    CopyState::Refused
                );
                if let Some(Pending::Execute { .. }) = self.tracker.pending.front()
                    && let Some(Pending::Execute {
                        running: Some(running),
                        ..
                    }) = self.tracker.pending.pop_front()
                {
                    self.complete(running, if refused { "COPY refused" } else { "" });
                }
                self.query_plan = None;
                if refused {
                    return;
                }
            }
            _ => {}
        }
        frame.encode_into(&mut self.to_client);
        self.summary.bytes_down += frame.raw().len() as u64;
    }

    fn count_row(&mut self, masked: bool) {
        let running = match self.tracker.pending.front_mut() {
            Some(Pending::Execute {
                running: Some(r), ..
            })
            | Some(Pending::Query(Some(r))) => r,
            _ => return,
        };
        running.rows += 1;
        running.masked |= masked;
    }

    fn complete(&self, running: Running, error: &str) {
        let duration_us = u64::try_from(running.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.recording.record(Body::Result {
            text: running
                .execute
                .then(|| super::classify::redact_passwords(&running.sql).into_owned()),
            rows: running.rows,
            duration_us,
            error: (!error.is_empty()).then(|| error.to_owned()),
            masked: running.masked,
            columns: running.columns,
            sample: running.sample,
        });
        debug!(
            flow_id = self.flow.id,
            statement = %super::classify::redact_passwords(&running.sql),
            class = %running.class,
            rows = running.rows,
            masked = running.masked,
            duration_ms = duration_us as f64 / 1000.0,
            error,
            "statement done"
        );
    }

    /// The statement the front response belongs to, if it is recorded.
    fn front_running(&mut self) -> Option<&mut Running> {
        match self.tracker.pending.front_mut() {
            Some(Pending::Execute {
                running: Some(r), ..
            })
            | Some(Pending::Query(Some(r))) => Some(r),
            _ => None,
        }
    }

    /// Keeps a RowDescription's column names for the recording.
    fn note_columns(&mut self, body: &Bytes) {
        let Ok(description) = RowDescription::parse(body) else {
            return;
        };
        if let Some(running) = self.front_running() {
            running.columns = description
                .fields
                .iter()
                .map(|f| f.name.to_owned())
                .collect();
            running.sample.clear();
        }
    }

    /// Whether the statement at the front still records the rows it returns.
    fn sampling(&mut self) -> bool {
        let limit = self.recording.result_rows();
        self.front_running().is_some_and(|r| r.sample.len() < limit)
    }

    /// Keeps a row, as the client receives it, while the sample has room.
    fn sample_values<'v>(&mut self, values: impl ExactSizeIterator<Item = Option<&'v [u8]>>) {
        let limit = self.recording.result_rows();
        let Some(running) = self.front_running() else {
            return;
        };
        if running.sample.len() < limit {
            running.sample.push_row(values);
        }
    }

    /// Forwards a DataRow through its masking plan, writing a masked row
    /// straight into the client's buffer. A row that cannot be read (the
    /// upstream broke the protocol) is not forwarded at all: the session
    /// ends rather than let unread values through.
    fn forward_masked(&mut self, plan: &ResultPlan, frame: &Frame) {
        let Ok(row) = DataRow::parse(frame.body()) else {
            return self.upstream_malformed("a DataRow it cannot read");
        };
        let mut masked = std::mem::take(&mut self.masked_row);
        if plan.mask(row.columns(), &mut masked) {
            let start = self.to_client.len();
            if DataRow::encode_columns(masked.values(row.columns()), &mut self.to_client).is_err() {
                self.to_client.truncate(start);
                self.masked_row = masked;
                return self.upstream_malformed("a DataRow too large to mask");
            }
            self.summary.bytes_down += (self.to_client.len() - start) as u64;
            // What the client gets is what the recording keeps.
            self.sample_values(masked.values(row.columns()));
        } else {
            frame.encode_into(&mut self.to_client);
            self.summary.bytes_down += frame.raw().len() as u64;
            self.sample_values(row.columns());
        }
        self.masked_row = masked;
    }

    /// Ends the session: the upstream sent `what`.
    fn upstream_malformed(&mut self, what: &str) {
        self.summary.error = Some(format!("upstream sent {what}"));
        self.to_client.extend_from_slice(&fatal(
            "08P01",
            "chokepoint: the upstream server sent a message the gateway cannot mask",
        ));
        self.upstream_broken = true;
    }

    /// The masking plan of the Execute at the front, computed at its first
    /// row from the layout the gateway asked for.
    async fn execute_plan(&mut self) -> Option<Arc<ResultPlan>> {
        let Some(Pending::Execute { layout, plan, .. }) = self.tracker.pending.front() else {
            return None;
        };
        if let Some(plan) = plan {
            return Some(plan.clone());
        }
        let layout = layout.clone()?;
        let computed = self.plan_for(&layout).await;
        if let Some(Pending::Execute { plan, .. }) = self.tracker.pending.front_mut() {
            plan.clone_from(&computed);
        }
        computed
    }

    /// Resolves each column's source table and asks the masking policy.
    async fn plan_for(&self, body: &Bytes) -> Option<Arc<ResultPlan>> {
        if self.ctx.masking.is_empty() {
            return None;
        }
        let description = RowDescription::parse(body).ok()?;
        let fields: Vec<_> = description
            .fields
            .iter()
            .map(|f| (f.name, f.table_oid, f.column_attr, f.type_oid, f.format))
            .collect();
        Some(self.plan_columns(&fields).await)
    }

    /// `(name, table OID, attribute number, type OID, format)` per column.
    async fn plan_columns(&self, fields: &[(&str, u32, i16, u32, i16)]) -> Arc<ResultPlan> {
        let login = self.catalog_login();
        let catalog = self.ctx.shared.catalog(&self.ctx.target.name);
        let mut sources = Vec::with_capacity(fields.len());
        for &(_, table_oid, attr, _, _) in fields {
            sources.push(catalog.source(table_oid, attr, &login).await);
        }
        let columns: Vec<ColumnInfo<'_>> = fields
            .iter()
            .zip(&sources)
            .map(|(&(name, _, _, type_oid, format), source)| ColumnInfo {
                source: source
                    .as_deref()
                    .map(|(s, t, c)| (s.as_str(), t.as_str(), c.as_str())),
                output_name: name,
                type_oid,
                format,
            })
            .collect();
        Arc::new(self.ctx.masking.plan(&columns))
    }

    fn catalog_login(&self) -> CatalogLogin<'_> {
        let (route, role, database, password) = &self.login;
        CatalogLogin {
            route,
            user: role,
            database,
            password,
        }
    }

    /// A CopyOutResponse arrived: how its rows are masked. `Ok(None)`:
    /// nothing to mask. `Err`: the rows cannot be masked and must not
    /// reach the client.
    async fn copy_out_rows(&mut self) -> Result<Option<CopyRows>, String> {
        if self.ctx.masking.is_empty() {
            return Ok(None);
        }
        let (sql, index) = match self.tracker.pending.front() {
            Some(Pending::Query(Some(r))) => (r.sql.clone(), self.copies_seen),
            Some(Pending::Execute {
                running: Some(r), ..
            }) => (r.sql.clone(), 0),
            _ => return Err("the COPY cannot be matched to its statement".into()),
        };
        self.copies_seen += 1;
        let copy = copy_out::copy_outs(&sql)?
            .into_iter()
            .nth(index)
            .ok_or("the COPY cannot be matched to its statement")?;
        let format = copy.format?;
        let described = self
            .ctx
            .shared
            .catalog(&self.ctx.target.name)
            .describe(&copy.layout_sql, &self.catalog_login())
            .await
            .map_err(|e| format!("its columns cannot be described ({e})"))?;
        let fields: Vec<_> = described
            .iter()
            .map(|c| (c.name.as_str(), c.table_oid, c.column_attr, c.type_oid, 0))
            .collect();
        let plan = self.plan_columns(&fields).await;
        CopyRows::new(plan, format).map(Some)
    }

    /// Ends a COPY whose rows may not be sent: the client gets an error in
    /// its place and the rest of the copy stream is dropped.
    fn refuse_copy_out(&mut self, why: &str) {
        warn!(flow_id = self.flow.id, "COPY TO STDOUT refused: {why}");
        self.to_client.extend_from_slice(&deny_error(
            "copy-out-masked",
            &format!("COPY … TO STDOUT of masked data cannot be masked here: {why}; select the rows instead"),
            "",
        ));
        self.copy = CopyState::Refused;
    }
}

/// Where the session is in a COPY TO STDOUT.
enum CopyState {
    Idle,
    Masking(CopyRows),
    /// Refused with an error already sent: drop CopyData, CopyDone and the
    /// CommandComplete that ends the COPY.
    Refused,
}

/// A complete message with `tag`; for the few the gateway writes itself.
fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

fn class_names(classification: Option<&Classification>) -> String {
    let Some(c) = classification else {
        return String::new();
    };
    let mut names: Vec<String> = c.statements.iter().map(|s| s.class.to_string()).collect();
    names.dedup();
    names.join(",")
}

/// ErrorResponse for a denial: SQLSTATE 42501, the rule in the message,
/// the statement in the detail.
fn deny_error(rule: &str, message: &str, statement: &str) -> Bytes {
    let message = format!("chokepoint: {message}");
    let detail = format!("statement: {statement}");
    let hint =
        format!("rule: {rule}; ask the owners of the chokepoint policy if this job needs it");
    let fields = ErrorFields {
        severity: codec::Severity::Error,
        code: codec::SQLSTATE_INSUFFICIENT_PRIVILEGE,
        message: &message,
        detail: (!statement.is_empty()).then_some(detail.as_str()),
        hint: Some(&hint),
    };
    // Fails only on a malformed SQLSTATE, and this one is a constant.
    fields.to_bytes().unwrap_or_default()
}

/// A FATAL ErrorResponse that ends the session.
fn fatal(code: &str, message: &str) -> Bytes {
    ErrorFields {
        severity: codec::Severity::Fatal,
        code,
        message,
        detail: None,
        hint: None,
    }
    .to_bytes()
    .unwrap_or_default()
}

fn push_query(out: &mut BytesMut, sql: &str) {
    // Cannot fail: the text has no NUL (it is built from a hex nonce).
    let _ = postgres_protocol::message::frontend::query(sql, out);
}

fn push_parse(out: &mut BytesMut, name: &str, sql: &str) {
    let _ = postgres_protocol::message::frontend::parse(name, sql, std::iter::empty(), out);
}

fn push_bind(out: &mut BytesMut, portal: &str, missing_statement: &str) {
    let _ = postgres_protocol::message::frontend::bind(
        portal,
        missing_statement,
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<&[u8]>>(),
        |_: Option<&[u8]>,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::Yes)
        },
        std::iter::empty::<i16>(),
        out,
    );
}

fn push_describe_portal(out: &mut BytesMut, portal: &str) {
    let _ = postgres_protocol::message::frontend::describe(b'P', portal, out);
}
