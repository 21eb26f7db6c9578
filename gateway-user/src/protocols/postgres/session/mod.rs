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
//!
//! Here: the session state and its loop. Beside it: `startup` (TLS, the
//! startup message, the upstream login), `client` (each frontend message
//! decided), `hold` (statements waiting for approval), `results` (each
//! backend message tracked and sampled for the recording),
//! `result_masking` (masking plans, masked rows, COPY TO STDOUT),
//! `prepared` (what each prepared statement name holds) and `messages`
//! (what the gateway writes itself).
mod client;
mod copy_as_query;
mod cursors;
mod hold;
mod messages;
mod prepared;
mod result_masking;
mod results;
mod startup;

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::either::Either;
use tracing::{Level, debug, error, info, warn};

use self::{
    messages::{
        class_names, deny_error, fatal, limit_error, push_bind, push_close_portal,
        push_close_statement, push_describe_portal, push_execute, push_flush, push_parse,
        push_query, push_sync, put_message,
    },
    prepared::parse_undo,
    startup::{connect, startup_with_tls},
};
use super::{
    PostgresContext,
    cancel::BackendKey,
    catalog::{Catalog, CatalogLogin},
    classify::Classification,
    codec::{
        self, CodecError, DataRow, Encode, ErrorFields, ErrorResponse, Frame, FrameDecoder,
        FrontendMessage, NoticeResponse, NotificationResponse, ObjectKind, ParameterStatus,
        RowDescription, StartupMessage, StartupPacket, read_startup_frame,
    },
    copy_out::{self, CopyFormat, CopyOut, TableCopy},
    search_path::SearchPath,
    tls::{self, ClientStream},
    tracker::{
        Approved, Denial, Layout, LayoutCache, Pending, Portal, PreparedStatement, Running, Shown,
        SqlPrepared, Tracker,
    },
    upstream::{self, Route, Upstream, UpstreamError},
};
use crate::{
    approvals::{Ask, GrantQuery, Held, HeldEvent, Requester, State as ApprovalState},
    flow::Flow,
    masking::{ColumnInfo, ColumnRule, MaskedRow, MaskingPolicy, Reading, ResultPlan},
    policy::{
        ApprovalRule, CopyOutMasked, Mode, SessionRules, StatementDecision, StatementVerdict,
    },
    recording::{Body, SessionRecording},
};

/// Stop reading a side while this much is queued for the other one.
const HIGH_WATER: usize = 1 << 20;
/// Bound on requests sent but not yet answered (pipelining). Each holds a
/// few hundred bytes of its own besides its text, and a busy server can
/// leave this many unanswered on every connection of a job: found in
/// review, 100,000 let one job's connections pin gigabytes in tiny
/// queries. Deep pipelines (pgbench's pipeline mode, drivers) stay far
/// below it.
const MAX_PENDING: usize = 8192;
/// Most bytes taken from the client per read. The checks above stop
/// reading, but every message already read is handled: after one large
/// message the buffer has megabytes of room, and a read filling it with
/// 5-byte Syncs would queue a million statements past `MAX_PENDING`.
const CLIENT_READ: usize = 64 * 1024;
/// A message partly received is counted against the job's budget
/// ([`crate::job_budget`]) once it is this large; smaller ones never make
/// a buffer grow past what reading needs anyway.
pub(super) const LARGE_MESSAGE: usize = 64 * 1024;

/// Most bytes of a statement a log line carries: statements may be
/// megabytes, and the recording keeps each whole.
const LOGGED_TEXT: usize = 1024;

/// `text` for a log line: whole up to [`LOGGED_TEXT`], else its start and
/// how long it was.
pub(super) fn logged(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LOGGED_TEXT {
        return text.into();
    }
    let mut cut = LOGGED_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len()).into()
}

/// Which side a partly received message comes from.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

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

/// A client must finish its startup (TLS handshake included) within this:
/// half-sent startup packets must not hold the gateway's tasks and buffers
/// for as long as the job cares to keep them open.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a refused client may take to send its startup message.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Refusals that wait for a startup message at once, host-wide; past
/// this, clients are reset without a word, so a flood holds nothing.
static REFUSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);

/// Refuses a client before its session starts, with an error it can show,
/// or resets it when too many refusals are under way already. libpq 15 and
/// later show no error sent in answer to an SSLRequest or GSSENCRequest,
/// so those are declined and the error answers the startup message.
pub async fn refuse_unstarted(mut client: TcpStream, code: &str, message: &str) {
    let Ok(_turn) = REFUSING.try_acquire() else {
        crate::protocols::tcp::refuse(client).await;
        return;
    };
    let polite = async {
        let mut buf = BytesMut::with_capacity(1024);
        let mut decoder = FrameDecoder::default();
        // At most an SSLRequest, a GSSENCRequest, then the startup.
        for _ in 0..3 {
            let Ok(Some(frame)) =
                codec::read_startup_frame(&mut client, &mut buf, &mut decoder).await
            else {
                return Ok(());
            };
            match frame.code() {
                codec::SSL_REQUEST_CODE | codec::GSSENC_REQUEST_CODE => {
                    client.write_all(b"N").await?;
                }
                codec::CANCEL_REQUEST_CODE => return Ok(()),
                _ => {
                    client.write_all(&fatal(code, message)).await?;
                    return client.shutdown().await;
                }
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_WAIT, polite).await;
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

    let started = tokio::time::timeout(
        STARTUP_TIMEOUT,
        startup_with_tls(&ctx, client, &mut cbuf, &mut decoder),
    )
    .await;
    let Ok(started) = started else {
        let why = format!("no complete startup message within {STARTUP_TIMEOUT:?}");
        warn!(flow_id = flow.id, "{why}; closing the connection");
        summary.error = Some(why);
        return summary;
    };
    let (mut client, startup) = match started {
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
    let search_path = match &upstream.search_path {
        Ok(path) => path.clone(),
        Err(why) => {
            warn!(
                flow_id = flow.id,
                "the session's search_path could not be read ({why}): table rules take an unqualified name to be in any schema"
            );
            SearchPath::unknown()
        }
    };
    info!(
        flow_id = flow.id,
        target = %ctx.target.name,
        %role,
        %database,
        upstream = %upstream.addr,
        session = recording.id(),
        %search_path,
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
    let Some(((pid, secret), _cancel_guard)) = ctx.shared.cancel.register(backend) else {
        let message = "chokepoint: no entropy source for this session's cancel key";
        error!(flow_id = flow.id, "{message}");
        let _ = client.write_all(&fatal("58000", message)).await;
        summary.error = Some(message.to_owned());
        return summary;
    };

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
        search_path,
        mode: ctx.mode,
        copy_out_masked: ctx.copy_out_masked,
        masking: Arc::clone(&ctx.masking),
        generation: ctx.generation,
        revoked: None,
        flow,
        recording,
        login: (route, role.clone(), database.clone(), password),
        tracker: Tracker::default(),
        statements: HashMap::new(),
        sql_prepared: HashMap::new(),
        prepared_held: std::sync::Mutex::new(None),
        unrecordable_said: Default::default(),
        uncertain_names: Default::default(),
        all_names_uncertain: false,
        portals: HashMap::new(),
        query_plan: None,
        layouts: LayoutCache::default(),
        masked_row: MaskedRow::default(),
        upstream_broken: false,
        copy: CopyState::Idle,
        copy_name: format!(
            "chokepoint_copy_{:08x}{:08x}",
            super::cancel::random_i32(),
            super::cancel::random_i32()
        ),
        copy_waiting: None,
        reading_memo: None,
        defined_code: false,
        schema_seen: ctx.shared.schema_generation(),
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

struct Session<'a> {
    ctx: Arc<PostgresContext>,
    /// The flow's rules narrowed to the session's role.
    rules: SessionRules,
    /// Where an unqualified table name may resolve, for the table rules.
    search_path: SearchPath,
    /// The statement policy's mode and COPY setting; with `rules`, taken
    /// again after a policy reload (see `refresh_policy`).
    mode: Mode,
    copy_out_masked: CopyOutMasked,
    /// The target's masking rules, also taken again after a reload (which
    /// empties `layouts`: their plans were made under the old rules).
    masking: Arc<MaskingPolicy>,
    /// The reload generation `rules` were made under.
    generation: u64,
    /// Set when a reload took this session's permission away: why.
    revoked: Option<String>,
    flow: &'a Flow,
    recording: &'a SessionRecording,
    /// Upstream route, role, database and password, for catalog lookups.
    login: (Route, String, String, String),
    tracker: Tracker,
    /// Statements prepared by Parse, by name.
    statements: HashMap<String, PreparedStatement>,
    /// Statements prepared by SQL `PREPARE`, by name (see `prepared`).
    sql_prepared: HashMap<String, SqlPrepared>,
    /// The job's budget held for the prepared statements' text, at the
    /// most it has been (behind a lock: checked from a match guard, which
    /// has only `&self`; never contended).
    prepared_held: std::sync::Mutex<Option<crate::job_budget::Held>>,
    /// Whether the first statement refused for a failed recording was
    /// logged (the rest are counted in the metrics).
    unrecordable_said: std::sync::atomic::AtomicBool,
    /// Names a `PREPARE`, `DEALLOCATE` or `DISCARD ALL` on its way may
    /// have changed on the server (`all_names_uncertain`: every name):
    /// until its answer a Parse of them is not taken to define them.
    uncertain_names: std::collections::HashSet<String>,
    all_names_uncertain: bool,
    portals: HashMap<String, Portal>,
    /// Plan of the simple-protocol result being streamed.
    query_plan: Option<Arc<ResultPlan>>,
    /// Result layouts planned so far, by their RowDescription's bytes.
    layouts: LayoutCache,
    /// Buffers of the row being masked, reused row after row.
    masked_row: MaskedRow,
    /// The upstream sent something the session cannot pass on safely; it ends.
    upstream_broken: bool,
    copy: CopyState,
    /// The statement and portal name under which a COPY runs as its
    /// query ([`copy_out`]): the session's own, which no job can guess.
    copy_name: String,
    /// A COPY's query was sent up to its Describe: the client's messages
    /// wait until its description came (`Some(true)`: it came as a simple
    /// Query, whose Sync the gateway sends).
    copy_waiting: Option<bool>,
    /// The last statement's reading rule ([`Session::reading_rule`]), when
    /// it was worked out; forgotten when the masking rules change.
    reading_memo: Option<(Arc<Classification>, Option<Reading>, Instant)>,
    /// The job sent DDL, a DO block or a CALL, or called a function of the
    /// database's own, and has not been idle outside a transaction since:
    /// what it changed may be uncommitted, out of the catalog
    /// connection's sight (see `Session::schema_may_change`).
    defined_code: bool,
    /// `PostgresShared::schema_generation` when `layouts` and
    /// `reading_memo` were last known good.
    schema_seen: u64,
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
// Returned and matched at once, never kept: boxing the Running would cost
// an allocation per statement for nothing.
#[allow(clippy::large_enum_variant)]
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
        // The budget held for the large message each buffer is receiving.
        let (mut cheld, mut uheld) = (None, None);
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
                && ((self.held.is_none() && self.copy_waiting.is_none())
                    || cbuf.len() < HIGH_WATER);
            let read_upstream = self.to_client.len() < HIGH_WATER;
            tokio::select! {
                r = uw.write_buf(&mut self.to_upstream), if !self.to_upstream.is_empty() => {
                    if let Err(e) = r { self.summary.error = Some(format!("upstream write: {e}")); break; }
                }
                r = cw.write_buf(&mut self.to_client), if !self.to_client.is_empty() => {
                    if let Err(e) = r { self.summary.error = Some(format!("client write: {e}")); break; }
                }
                r = async { (&mut cr).take(CLIENT_READ as u64).read_buf(&mut cbuf).await }, if read_client => match r {
                    Ok(0) => break,
                    Ok(n) => {
                        self.summary.bytes_up += n as u64;
                        if let Step::End = self.drain_client(&mut cbuf, &mut decoder).await { break; }
                        if let Step::End = self.hold_partial(&mut cbuf, &mut cheld, Side::Client) { break; }
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
                        let waiting = self.copy_waiting.is_some();
                        if let Step::End = self.drain_upstream(&mut ubuf, &mut udecoder).await { break; }
                        // The client's messages waited for a COPY's description.
                        if waiting && self.copy_waiting.is_none()
                            && let Step::End = self.drain_client(&mut cbuf, &mut decoder).await
                        {
                            break;
                        }
                        if let Step::End = self.hold_partial(&mut ubuf, &mut uheld, Side::Upstream) { break; }
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

    /// Holds the job's budget for the large message `buf` is receiving
    /// (only what has arrived is in memory, but all of it will be), and
    /// gives it back once the message is whole. A message the job's
    /// budget cannot take ends the session.
    fn hold_partial(
        &mut self,
        buf: &mut BytesMut,
        held: &mut Option<crate::job_budget::Held>,
        side: Side,
    ) -> Step {
        let Some(total) = codec::pending_len(buf).filter(|&n| n > LARGE_MESSAGE) else {
            if held.take().is_some() {
                // The large message is decoded, but the buffer still
                // points into its allocation and would reuse all of it:
                // an idle connection must not keep megabytes.
                *buf = BytesMut::from(&buf[..]);
            }
            return Step::Continue;
        };
        if held.as_ref().is_some_and(|h| h.bytes() == total) {
            return Step::Continue;
        }
        *held = None;
        match self.ctx.budget.take(total) {
            Ok(h) => {
                debug!(
                    flow_id = self.flow.id,
                    bytes = total,
                    "a large message is arriving: held against the job's max_buffered_mb_per_job"
                );
                *held = Some(h);
                Step::Continue
            }
            Err(spent) => {
                let whose = match side {
                    Side::Client => "a message of",
                    Side::Upstream => "the server's reply of",
                };
                let message = format!(
                    "chokepoint: {whose} {total} bytes does not fit in what this job's connections may hold at once ({} MiB held of [daemon] max_buffered_mb_per_job = {})",
                    spent.used >> 20,
                    spent.limit >> 20
                );
                warn!(flow_id = self.flow.id, "{message}");
                self.summary.error = Some(message.clone());
                self.to_client.extend_from_slice(&fatal("53200", &message));
                Step::End
            }
        }
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
            if self.held.is_some() || self.copy_waiting.is_some() {
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
}

/// Where the session is in a COPY TO STDOUT the server runs (one the
/// gateway runs as its query is tracked by its [`Running`]).
enum CopyState {
    Idle,
    /// Begun while the target had no masking at all: nothing was planned,
    /// so once a reload turns masking on, its rows cannot go out.
    Unplanned,
    /// Refused with an error already sent: drop CopyData, CopyDone and the
    /// CommandComplete that ends the COPY.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_statements_are_cut_for_the_log_on_a_character_boundary() {
        assert_eq!(logged("SELECT 1"), "SELECT 1");
        let long = format!("SELECT '{}'", "é".repeat(1000));
        let line = logged(&long);
        assert!(line.len() < LOGGED_TEXT + 40, "{}", line.len());
        assert!(
            line.ends_with(&format!("… ({} bytes in all)", long.len())),
            "{line}"
        );
        assert!(long.starts_with(line.split('…').next().unwrap()));
    }
}
