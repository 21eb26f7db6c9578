//! The fleet sink: every event, chain fields and exact bytes included, also
//! goes to a PostgreSQL table, so the recordings of many runners can be
//! searched in one place and verified from there (`chokepoint sessions
//! --store`). Local files stay the record of truth: when the database is
//! unreachable the writer keeps the rows (bounded) and retries, and the
//! sessions go on; rows that outgrow the backlog are sent again from the
//! files once the database answers.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, NoTls, error::SqlState};
use tracing::{error, info, warn};

/// `[recording] postgres` and its password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// libpq-style connection string (`host=… port=… user=… dbname=…`).
    pub conninfo: String,
    pub password_file: Option<PathBuf>,
}

/// Rows kept in memory for a database that does not answer, unless
/// `[recording] postgres_backlog` says otherwise: those waiting to be sent
/// and those the writer has handed over, together.
pub const DEFAULT_BACKLOG: usize = 100_000;

/// Longest one statement may take, on both sides (`statement_timeout` on
/// the server): a server that accepts the connection but never answers
/// must count as down.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One INSERT holds at most this many rows, and about this many bytes of
/// them: a large backlog sent whole would outgrow both the timeout and
/// PostgreSQL's 1 GB message (found in review).
const BATCH_ROWS: usize = 5_000;
const BATCH_BYTES: usize = 8 << 20;

/// Most bytes of rows handed to the sink and not yet in the database.
const MAX_QUEUED_BYTES: usize = 256 << 20;

/// Retries start a second apart and back off to this.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The longest wait before a session the database refused an event of is
/// sent again: a refusal that lasts (a constraint, a migration) costs one
/// re-send a session every five minutes.
const MAX_REFUSED_RETRY: Duration = Duration::from_secs(300);

/// Statements one batch may cost while the refused rows are sought. A
/// refusal of most of the batch (a change to the table) would otherwise
/// cost two statements a row; past this, the rest counts as refused, which
/// loses nothing: refused rows are sent again from their files.
const MAX_SPLIT_STATEMENTS: usize = 64;

/// Most sessions whose re-send progress is kept (see
/// [`Sink::keep_progress`]): a few bytes each.
const MAX_PROGRESS: usize = if cfg!(test) { 64 } else { 10_000 };

/// The kind of a recording's last line.
const SEAL: &str = "seal";

/// The sessions owed to the database, kept beside the recordings so that
/// a restart during an outage still sends them.
const OWED_FILE: &str = "fleet-owed";

/// The table, created on start if missing. `raw` is the event exactly as
/// hashed (jsonb would reorder it); `event` is the same, searchable.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chokepoint_events (
    session    text        NOT NULL,
    seq        bigint      NOT NULL,
    host       text        NOT NULL,
    wall       timestamptz NOT NULL,
    type       text        NOT NULL,
    prev_hash  text        NOT NULL,
    hash       text        NOT NULL,
    raw        text        NOT NULL,
    event      jsonb       NOT NULL,
    PRIMARY KEY (session, seq)
);
CREATE INDEX IF NOT EXISTS chokepoint_events_wall ON chokepoint_events (wall);
";

/// One line of a recording, for the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub session: String,
    pub seq: i64,
    pub wall: String,
    pub kind: &'static str,
    pub prev_hash: String,
    pub hash: String,
    pub raw: String,
}

impl Row {
    /// About the memory it holds.
    fn weight(&self) -> usize {
        self.raw.len() + self.session.len() + self.wall.len() + 2 * 64 + 64
    }
}

/// Why a statement did not put its rows in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The database is down, slow, busy or refusing for a reason of its
    /// own: everything is tried again later.
    Transient(String),
    /// The server refused what the rows hold (see [`rejects_rows`]): the
    /// same rows are refused again until the table or the server's rules
    /// change, so other rows and sessions must not wait for them.
    Rejected(String),
}

/// Whether a server error is about the rows sent, so that sending them
/// again soon can only fail again: a data exception (class 22: a value the
/// column's type refuses, like a NUL escape in jsonb), an integrity
/// violation (23: a constraint someone added to the table; a row already
/// there is no error, ON CONFLICT skips it) or a program limit (54: a
/// value too large). Anything else may pass once the server or its
/// operator is done, and is retried: connection loss and timeouts (no
/// code, 57014), a shutdown (57P01), resources (53), serialization or
/// deadlock (40001, 40P01), a read-only server (25006), privileges or an
/// altered table (42), a trigger's own exception (P0001).
fn rejects_rows(code: &SqlState) -> bool {
    matches!(code.code().get(..2), Some("22" | "23" | "54"))
}

/// What [`Sink::send_each`] did with a batch.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sent {
    /// Rows the server refused, by index in the batch, with its message:
    /// their sessions are owed.
    rejected: Vec<(usize, String)>,
    /// A transient failure, and how many rows before it were sent or
    /// refused: those after are to be sent again.
    failed: Option<(usize, String)>,
}

/// Opens a connection with the settings' password (if any).
pub async fn connect(settings: &SinkSettings) -> Result<Client, String> {
    // Shared by [recording], [approvals] and `--store`: the caller names
    // which one; this says only what is wrong with it.
    let mut config = Config::from_str(&settings.conninfo)
        .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    if let Some(file) = &settings.password_file {
        let password = crate::regular_file::read_secret(file)
            .map_err(|e| format!("password_file {}: {e}", file.display()))?;
        config.password(password);
    }
    config
        .application_name("chokepoint-recorder")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The writer's end: rows go to the sink task unless that would take
/// what it holds past the backlog; then their sessions are owed instead.
pub struct SinkQueue {
    tx: mpsc::UnboundedSender<Vec<Row>>,
    shared: Arc<Shared>,
}

impl SinkQueue {
    /// Hands `rows` (already on disk) to the sink. Found in review: a
    /// database that hangs held the sink in one send while the writer's
    /// batches piled up in the channel with no bound; the bound is now
    /// kept here, where rows come in.
    pub fn send(&self, rows: Vec<Row>) {
        if rows.is_empty() {
            return;
        }
        let queued = self.shared.queued.load(Ordering::Relaxed);
        let bytes: usize = rows.iter().map(Row::weight).sum();
        // Rows can be a MiB each (a result's sample): bytes are bounded
        // too (found in review).
        if queued + rows.len() > self.shared.max
            || self.shared.queued_bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES
        {
            let mut owed = self.shared.owed();
            let before = owed.queue.len();
            for row in rows {
                owed.add(row.session);
            }
            if owed.queue.len() > before {
                warn!(
                    queued,
                    sessions = owed.queue.len(),
                    "the recording database is behind by {queued} events; sessions past that go again from the local recordings when it catches up"
                );
            }
            return;
        }
        self.shared.queued.fetch_add(rows.len(), Ordering::Relaxed);
        self.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let _ = self.tx.send(rows);
    }
}

/// Lets a shutdown wait for the sink.
pub struct SinkWatch(Arc<Shared>);

impl SinkWatch {
    /// Returns once every row handed to the sink is in the database, or
    /// after long enough for the sink to have saved the sessions of those
    /// that are not (it saves twice a second) when the database is down.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while self.0.queued.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Longest a shutdown waits for the sink.
const SETTLE: Duration = Duration::from_millis(1500);

/// What the writer and the sink task share.
struct Shared {
    /// Rows handed to the sink and not yet in the database: in the channel
    /// and in its backlog.
    queued: AtomicUsize,
    /// Their bytes, about.
    queued_bytes: AtomicUsize,
    max: usize,
    owed: Mutex<Owed>,
    /// Refusals of rows by the database for what they hold.
    rejected: AtomicUsize,
}

impl Shared {
    fn owed(&self) -> std::sync::MutexGuard<'_, Owed> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sessions whose rows the database lacks, sent again from their files:
/// ids only, so memory stays bounded however long an outage lasts.
#[derive(Default)]
struct Owed {
    /// In the order they are tried; a session that fails goes to the back,
    /// so one slow session cannot hold up the rest (found in review).
    queue: VecDeque<String>,
    set: HashSet<String>,
}

impl Owed {
    fn add(&mut self, session: String) {
        if self.set.insert(session.clone()) {
            self.queue.push_back(session);
        }
    }

    fn take(&mut self) -> Option<String> {
        let session = self.queue.pop_front()?;
        self.set.remove(&session);
        Some(session)
    }
}

/// Where a session's re-send stands in its file: the next line's offset,
/// the hash it must chain onto and its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub offset: u64,
    pub prev: String,
    pub seq: u64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            offset: 0,
            prev: super::chain::GENESIS.to_owned(),
            seq: 0,
        }
    }
}

/// Why reading a recording's rows stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// A batch is full: more to read.
    Full,
    /// The end of the file (or of its last whole line).
    End,
    /// A line that is not the next line of this session's chain: nothing
    /// from it on is sent.
    Broken(String),
}

/// The sink task: a connection made on demand, a backlog, and the
/// sessions owed.
pub struct Sink {
    settings: SinkSettings,
    host: String,
    client: Option<Client>,
    backlog: Vec<Row>,
    shared: Arc<Shared>,
    /// How far each owed session's file has been sent.
    progress: HashMap<String, Progress>,
    /// The recordings directory, where the owed sessions' files are.
    dir: PathBuf,
    failing: bool,
    retry: Duration,
    next_try: tokio::time::Instant,
    /// What [`OWED_FILE`] holds, as last written (`None`: not known, so
    /// the next save writes).
    saved: Option<String>,
    /// The last save failed (logged once, not twice a second).
    save_failed: bool,
    /// Whether [`OWED_FILE`] may be written (see [`OwedFile`]).
    owed_file: OwedFile,
    /// Sessions the database refused an event of, owed: sent again from
    /// their files no sooner than the instant, the delay backing off to
    /// [`MAX_REFUSED_RETRY`]. Bounded by the owed list.
    refused: HashMap<String, (tokio::time::Instant, Duration)>,
    /// Stands in for the database in unit tests.
    #[cfg(test)]
    fake: Option<FakeDatabase>,
}

/// A statement's outcome, decided by a unit test.
#[cfg(test)]
type FakeDatabase = Box<dyn FnMut(&[Row]) -> Result<(), Failure> + Send>;

impl Sink {
    /// A sink for `settings` keeping at most `max_backlog` rows in memory.
    /// `owed`: sessions to send again from their files (those the last run
    /// left open), with those the last run still owed.
    pub fn new(settings: SinkSettings, dir: &Path, max_backlog: usize, owed: Vec<String>) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        let (saved_owed, owed_file) = load_owed(dir, std::time::SystemTime::now());
        let mut first = Owed::default();
        for session in owed.into_iter().chain(saved_owed) {
            first.add(session);
        }
        Self {
            settings,
            host,
            client: None,
            backlog: Vec::new(),
            shared: Arc::new(Shared {
                queued: AtomicUsize::new(0),
                queued_bytes: AtomicUsize::new(0),
                max: max_backlog.max(1),
                owed: Mutex::new(first),
                rejected: AtomicUsize::new(0),
            }),
            progress: HashMap::new(),
            dir: dir.to_path_buf(),
            failing: false,
            retry: Duration::from_secs(1),
            next_try: tokio::time::Instant::now(),
            saved: None,
            save_failed: false,
            owed_file,
            refused: HashMap::new(),
            #[cfg(test)]
            fake: None,
        }
    }

    /// A handle to wait on this sink at shutdown.
    pub fn watch(&self) -> SinkWatch {
        SinkWatch(Arc::clone(&self.shared))
    }

    /// The writer's end of this sink.
    pub fn queue(&self, tx: mpsc::UnboundedSender<Vec<Row>>) -> SinkQueue {
        SinkQueue {
            tx,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs on the writer's runtime as its own task, so a slow or absent
    /// database never holds up the local files: batches come in over
    /// `rx`; after a failure, nothing is sent until the next retry, a
    /// second later at first and backing off to [`MAX_RETRY`]; what is left
    /// is tried once more when `rx` closes.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Vec<Row>>) {
        // What the last run left owed is on disk before any send.
        self.save_owed();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(rows) = batch else { break };
                    self.backlog.extend(rows);
                    while let Ok(rows) = rx.try_recv() {
                        self.backlog.extend(rows);
                    }
                    if !self.failing {
                        self.flush().await;
                    }
                }
                _ = tick.tick() => {
                    if self.behind() && tokio::time::Instant::now() >= self.next_try {
                        self.flush().await;
                    }
                    self.save_owed();
                }
            }
        }
        self.flush().await;
        self.save_owed();
    }

    /// Whether anything waits for the database.
    fn behind(&self) -> bool {
        !self.backlog.is_empty() || !self.shared.owed().queue.is_empty()
    }

    /// Sends the backlog in batches (each dropped once in), then the
    /// sessions owed from their files.
    async fn flush(&mut self) {
        let mut backlog = std::mem::take(&mut self.backlog);
        let mut sent = 0;
        while sent < backlog.len() {
            let n = batch_len(&backlog[sent..]);
            if let Err((done, e)) = self.send_or_owe(&backlog[sent..sent + n]).await {
                sent += done;
                self.forget_sealed(&backlog[..sent]);
                // Nothing joined the backlog meanwhile: only this task fills it.
                self.release(backlog.drain(..sent));
                self.backlog = backlog;
                self.failed(&e);
                return;
            }
            sent += n;
        }
        self.forget_sealed(&backlog);
        self.release(backlog.drain(..));
        if let Err(e) = self.resend_owed().await {
            self.failed(&e);
            return;
        }
        if self.failing {
            info!("the recording database answers again");
        }
        self.failing = false;
        self.retry = Duration::from_secs(1);
    }

    /// Keeps where the re-send of an unsealed `session` stands. The map
    /// only grows with sessions still being recorded (their seals prune
    /// them, see [`Sink::forget_sealed`]), but a recording that failed
    /// never gets its seal in this run: past [`MAX_PROGRESS`] the entries
    /// of sessions not owed now go. Losing one costs only a re-send from
    /// the start, which the database takes as it takes any (rows it has
    /// are skipped).
    fn keep_progress(&mut self, session: String, at: Progress) {
        self.progress.insert(session, at);
        if self.progress.len() > MAX_PROGRESS {
            let owed = self.shared.owed();
            self.progress
                .retain(|session, _| owed.set.contains(session));
        }
    }

    /// Forgets the re-send progress of the sessions whose seal is among
    /// `rows` (sent, or refused: either way the session is over), unless
    /// owed again: that re-send reads on to the seal and forgets it then.
    fn forget_sealed(&mut self, rows: &[Row]) {
        if self.progress.is_empty() {
            return;
        }
        let owed = self.shared.owed();
        for row in rows.iter().filter(|row| row.kind == SEAL) {
            if !owed.set.contains(&row.session) {
                self.progress.remove(&row.session);
            }
        }
    }

    /// Rows that left memory: the writer may hand over as many again.
    fn release(&self, rows: impl Iterator<Item = Row>) {
        let (mut n, mut bytes) = (0, 0);
        for row in rows {
            n += 1;
            bytes += row.weight();
        }
        self.shared.queued.fetch_sub(n, Ordering::Relaxed);
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn failed(&mut self, error: &str) {
        if !self.failing {
            warn!(
                error,
                "cannot write to the recording database; retrying, local recordings continue"
            );
        }
        self.failing = true;
        self.client = None;
        self.next_try = tokio::time::Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// Sends each owed session again from where its re-send stands. A
    /// session whose send fails goes to the back of the queue; `Err` then.
    async fn resend_owed(&mut self) -> Result<(), String> {
        // Those owed now, once each: under load the writer owes sessions
        // again as fast as they go, and this task must get back to its
        // channel and its saving (found in review).
        let due = self.shared.owed().queue.len();
        for _ in 0..due {
            // Taken before its file is read: rows of it the writer cannot
            // hand over meanwhile owe it again, and are sent next time.
            let Some(session) = self.shared.owed().take() else {
                return Ok(());
            };
            if let Some((when, _)) = self.refused.get(&session)
                && *when > tokio::time::Instant::now()
            {
                // Refused lately: its turn comes after its back-off.
                self.shared.owed().add(session);
                continue;
            }
            let mut at = self.progress.remove(&session).unwrap_or_default();
            let result = self.resend(&session, &mut at).await;
            // Sent through, or no longer sendable: its back-off is over.
            if matches!(
                result,
                Ok(Resent::End { .. } | Resent::Broken(_)) | Err(Resend::File(_))
            ) {
                self.refused.remove(&session);
            }
            match result {
                // Resumed at the batch that held the refused rows (found
                // in review: from the first line, a large recording was
                // read and sent whole at every retry).
                Ok(Resent::Refused) => self.keep_progress(session, at),
                Ok(Resent::End { sealed }) => {
                    info!(
                        session,
                        "sent a session to the recording database again from its recording"
                    );
                    // Resumed from here should it be owed again; a sealed
                    // one has nothing more to send.
                    if !sealed {
                        self.keep_progress(session, at);
                    }
                }
                Ok(Resent::Broken(why)) => {
                    error!(session, reason = %why, "a recording no longer chains where the recording database needs it: the rest is not sent, and the database keeps the session incomplete; run `chokepoint sessions verify` on it");
                }
                Err(Resend::File(why)) => {
                    // Retention may have taken it meanwhile.
                    warn!(session, error = %why, "cannot read a recording to send it to the recording database again; the database keeps it incomplete");
                }
                Err(Resend::Database(e)) => {
                    self.shared.owed().add(session.clone());
                    self.keep_progress(session, at);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends the lines of `session`'s recording from `at` on, a batch at
    /// a time, each checked to chain onto the last: the file is the record
    /// of truth, but one altered since it was written must not become the
    /// fleet copy (found in review).
    async fn resend(&mut self, session: &str, at: &mut Progress) -> Result<Resent, Resend> {
        let path = super::files::find(&self.dir, session).map_err(Resend::File)?;
        let mut sealed = false;
        // Where the first batch with refused rows began: the batches after
        // it still go (found in review: the rest of a long session stayed
        // out of the database behind one refused row), and the next
        // re-send, after the back-off, resumes there.
        let mut refused_at: Option<Progress> = None;
        loop {
            let mut next = at.clone();
            let (rows, stop) = read_rows(&path, session, &mut next, BATCH_ROWS, BATCH_BYTES)
                .map_err(|e| Resend::File(format!("{}: {e}", path.display())))?;
            // Rows sent before a failure are sent again next time: the
            // database skips those it has.
            let refused = match self.send_or_owe(&rows).await {
                Ok(refused) => refused,
                Err((_, e)) => {
                    if let Some(first) = refused_at {
                        *at = first;
                    }
                    return Err(Resend::Database(e));
                }
            };
            if refused && refused_at.is_none() {
                refused_at = Some(at.clone());
            }
            *at = next;
            sealed |= rows.iter().any(|row| row.kind == SEAL);
            let ended = match stop {
                Stop::Full => continue,
                Stop::End => Resent::End { sealed },
                Stop::Broken(why) => Resent::Broken(why),
            };
            return Ok(match refused_at {
                Some(first) => {
                    *at = first;
                    Resent::Refused
                }
                None => ended,
            });
        }
    }

    /// Sends `rows`, halving a batch the server refuses until the rows it
    /// refuses are alone: those are reported, the others sent. One bad row
    /// in a batch of 5,000 costs about 26 statements, and no longer holds
    /// up every row and session behind it for ever.
    async fn send_each(&mut self, rows: &[Row]) -> Sent {
        let mut sent = Sent::default();
        // The next range on top, so ranges go in order and what was done
        // before a transient failure is a prefix of `rows`.
        let mut todo = Vec::new();
        todo.push(0..rows.len());
        let mut statements = 0;
        // Ranges are only pushed after a refusal: past the budget they
        // count as refused with its reason, unsent.
        let mut refusal = String::new();
        while let Some(range) = todo.pop() {
            if statements >= MAX_SPLIT_STATEMENTS {
                sent.rejected.extend(range.map(|i| (i, refusal.clone())));
                continue;
            }
            statements += 1;
            match self.send(&rows[range.clone()], EventColumn::Parsed).await {
                Ok(()) => {}
                Err(Failure::Transient(why)) => {
                    sent.failed = Some((range.start, why));
                    break;
                }
                // An empty range is only sent to connect, and nothing is
                // refused of it.
                Err(Failure::Rejected(_)) if range.is_empty() => {}
                Err(Failure::Rejected(why)) if statements >= MAX_SPLIT_STATEMENTS => {
                    sent.rejected.extend(range.map(|i| (i, why.clone())));
                    refusal = why;
                }
                Err(Failure::Rejected(why)) if range.len() == 1 => {
                    // The line itself may be what `jsonb` refuses (a
                    // `\u0000` escape, 22P05) while `text` takes it: the
                    // evidence goes whole, its `event` as a JSON string.
                    statements += 1;
                    match self.send(&rows[range.clone()], EventColumn::Raw).await {
                        Ok(()) => {}
                        Err(Failure::Transient(why)) => {
                            sent.failed = Some((range.start, why));
                            break;
                        }
                        Err(Failure::Rejected(_)) => sent.rejected.push((range.start, why)),
                    }
                }
                Err(Failure::Rejected(why)) => {
                    refusal = why;
                    let middle = range.start + range.len() / 2;
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
            }
        }
        sent
    }

    /// Sends `rows`; the sessions of those the server refuses for what
    /// they hold are owed (logged and counted), to be sent again from
    /// their files, backing off: nothing is left out for good, since a
    /// refusal of every row looks the same as one of a bad row (a
    /// constraint or column added to the table; found in review), and the
    /// rest of the batch and other sessions go on. `Ok(true)`: some were
    /// refused. `Err`: a transient failure, after how many rows.
    async fn send_or_owe(&mut self, rows: &[Row]) -> Result<bool, (usize, String)> {
        let sent = self.send_each(rows).await;
        let mut owed: Vec<&str> = Vec::new();
        for (i, why) in &sent.rejected {
            let row = &rows[*i];
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            crate::admin::metrics::fleet_row_rejected();
            if !owed.contains(&row.session.as_str()) {
                owed.push(&row.session);
                let wait = self.owe_refused(&row.session);
                error!(
                    session = row.session,
                    seq = row.seq,
                    error = %why,
                    retry_in_s = wait.as_secs(),
                    "the recording database refuses an event of a session: the session is sent again from its recording later, and its copy there is incomplete until then; the local recording has it"
                );
            }
        }
        match sent.failed {
            Some(failed) => Err(failed),
            None => Ok(!sent.rejected.is_empty()),
        }
    }

    /// Owes `session` after a refusal: its re-send starts where the last
    /// one stood before the refused rows (rows the database has are
    /// skipped), no sooner than its back-off allows. The wait before it.
    fn owe_refused(&mut self, session: &str) -> Duration {
        let wait = match self.refused.get(session) {
            Some((_, last)) => (*last * 2).min(MAX_REFUSED_RETRY),
            None => Duration::from_secs(5),
        };
        self.refused.insert(
            session.to_owned(),
            (tokio::time::Instant::now() + wait, wait),
        );
        self.shared.owed().add(session.to_owned());
        wait
    }

    /// Sends `rows` in one statement (connecting first if needed), within
    /// [`SEND_TIMEOUT`].
    async fn send(&mut self, rows: &[Row], event: EventColumn) -> Result<(), Failure> {
        #[cfg(test)]
        if let Some(fake) = &mut self.fake {
            return fake(rows);
        }
        tokio::time::timeout(
            SEND_TIMEOUT + Duration::from_secs(1),
            self.send_now(rows, event),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Transient(format!(
                "no answer within {} s",
                SEND_TIMEOUT.as_secs()
            )))
        })
    }

    async fn send_now(&mut self, rows: &[Row], event: EventColumn) -> Result<(), Failure> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            // Whatever stops the connection or the table, it is not the
            // rows: transient.
            let client = connect(&self.settings).await.map_err(Failure::Transient)?;
            // Ended by the server too: a timed-out INSERT left running
            // would commit later and pile up behind the retries.
            client
                .batch_execute(&format!(
                    "SET statement_timeout = {}; {SCHEMA}",
                    SEND_TIMEOUT.as_millis()
                ))
                .await
                .map_err(|e| Failure::Transient(format!("creating the table: {e}")))?;
            self.client = Some(client);
        }
        let Some(client) = &self.client else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&Row) -> String| rows.iter().map(f).collect::<Vec<_>>();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let statement = match event {
            EventColumn::Parsed => INSERT_PARSED,
            EventColumn::Raw => INSERT_RAW,
        };
        client
            .execute(
                statement,
                &[
                    &column(|r| r.session.clone()),
                    &seqs,
                    &self.host,
                    &column(|r| r.wall.clone()),
                    &column(|r| r.kind.to_owned()),
                    &column(|r| r.prev_hash.clone()),
                    &column(|r| r.hash.clone()),
                    &column(|r| r.raw.clone()),
                ],
            )
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) if rejects_rows(db.code()) => {
                    Failure::Rejected(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
                }
                Some(db) => Failure::Transient(db.message().to_owned()),
                None => Failure::Transient(e.to_string()),
            })?;
        Ok(())
    }

    /// Tries again to read, or else move aside, an [`OWED_FILE`] left in
    /// place at start: an operator may have fixed it meanwhile. Whether it
    /// may now be written.
    fn retry_owed_file(&mut self) -> bool {
        let sessions = match read_owed(&self.dir.join(OWED_FILE)) {
            Ok(sessions) => {
                info!(path = %self.dir.join(OWED_FILE).display(), "the list of sessions owed to the recording database that could not be read at start is readable (or gone) now: its sessions are owed and it is saved again");
                sessions
            }
            Err((_, sessions)) => match set_aside(&self.dir, std::time::SystemTime::now()) {
                Ok(aside) => {
                    warn!(kept = %aside.display(), "moved aside the list of sessions owed to the recording database that could not be read at start");
                    sessions
                }
                Err(_) => return false,
            },
        };
        let mut owed = self.shared.owed();
        for session in sessions {
            owed.add(session);
        }
        self.owed_file = OwedFile::Writable;
        true
    }

    /// Writes the sessions the database still lacks rows of beside the
    /// recordings, when that changed: owed ones, and those of the rows in
    /// the backlog (the daemon does not wait for this task when it
    /// stops). A gateway stopped during an outage sends them at its next
    /// start.
    fn save_owed(&mut self) {
        if self.owed_file == OwedFile::Unreadable && !self.retry_owed_file() {
            return;
        }
        let mut sessions: std::collections::BTreeSet<&str> = self
            .backlog
            .iter()
            .map(|row| row.session.as_str())
            .collect();
        let owed = self.shared.owed();
        sessions.extend(owed.queue.iter().map(String::as_str));
        let text: String = sessions.iter().map(|s| format!("{s}\n")).collect();
        drop(owed);
        if self.saved.as_ref() == Some(&text) {
            return;
        }
        let path = self.dir.join(OWED_FILE);
        let tmp = self.dir.join(format!("{OWED_FILE}.new"));
        // Private, and never through a link put in its place.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, text.as_bytes())?;
                // On disk before it replaces the last list: after a power
                // loss an empty file would read as owing nothing (found in
                // review).
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all());
        match written {
            Ok(()) => {
                self.saved = Some(text);
                self.save_failed = false;
            }
            Err(e) => {
                if !std::mem::replace(&mut self.save_failed, true) {
                    warn!(error = %e, path = %path.display(), "cannot save the sessions owed to the recording database");
                }
                self.saved = None;
            }
        }
    }
}

/// How a re-send ended.
enum Resent {
    /// At the end of the file; `sealed`: the seal was among its lines, so
    /// the recording is complete and nothing of it can be owed again but
    /// what was just sent.
    End { sealed: bool },
    /// At a line that does not chain, where sending stopped.
    Broken(String),
    /// The database refused one of its events: owed again, backing off.
    Refused,
}

/// Why a re-send stopped.
enum Resend {
    /// The recording could not be found or read.
    File(String),
    Database(String),
}

/// What the `event` column of a row holds.
#[derive(Clone, Copy)]
enum EventColumn {
    /// The line parsed as `jsonb`, for queries.
    Parsed,
    /// The line as a JSON string: for a line `jsonb` refuses (a `\u0000`
    /// escape, which `text` takes), so the evidence in `raw` still goes.
    Raw,
}

const INSERT_PARSED: &str = "INSERT INTO chokepoint_events (session, seq, host, wall, type, prev_hash, hash, raw, event) \
     SELECT s, q, $3, w::timestamptz, t, p, h, r, r::jsonb \
     FROM unnest($1::text[], $2::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
       AS u(s, q, w, t, p, h, r) \
     ON CONFLICT (session, seq) DO NOTHING";

const INSERT_RAW: &str = "INSERT INTO chokepoint_events (session, seq, host, wall, type, prev_hash, hash, raw, event) \
     SELECT s, q, $3, w::timestamptz, t, p, h, r, to_jsonb(r) \
     FROM unnest($1::text[], $2::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
       AS u(s, q, w, t, p, h, r) \
     ON CONFLICT (session, seq) DO NOTHING";

/// Rows of a batch: at most [`BATCH_ROWS`] and about [`BATCH_BYTES`].
fn batch_len(rows: &[Row]) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for row in rows.iter().take(BATCH_ROWS) {
        bytes += row.weight();
        n += 1;
        if bytes >= BATCH_BYTES {
            break;
        }
    }
    n
}

/// Whether the sink may write [`OWED_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwedFile {
    Writable,
    /// It could not be read at start, nor moved aside: writing over it
    /// would lose the sessions it lists before anyone saw it, so nothing
    /// is saved until it can be read or moved (tried at each save).
    Unreadable,
}

/// Largest [`OWED_FILE`] read: a million ids and more.
const MAX_OWED_FILE: u64 = 64 << 20;

/// The sessions the last run still owed, from [`OWED_FILE`]. Found in
/// review: a file that could not be read (unreadable, a directory, a
/// link, garbled) was taken as empty, and the next save wrote over it, so
/// the sessions it listed were never sent again and no one knew. Such a
/// file is now logged and moved aside to `fleet-owed.unreadable-<time>`
/// for an operator (see the README's fleet store), and what could be read
/// of it is owed; moving it aside rather than refusing to save keeps this
/// run's owed sessions saved too. When it cannot even be moved, it is
/// left alone and nothing is saved over it ([`OwedFile::Unreadable`]).
fn load_owed(dir: &Path, now: std::time::SystemTime) -> (Vec<String>, OwedFile) {
    let path = dir.join(OWED_FILE);
    let (why, sessions) = match read_owed(&path) {
        Ok(sessions) => return (sessions, OwedFile::Writable),
        Err(unreadable) => unreadable,
    };
    match set_aside(dir, now) {
        Ok(aside) => {
            error!(
                path = %path.display(),
                reason = %why,
                kept = %aside.display(),
                owed = sessions.len(),
                "cannot read the sessions the last run owed to the recording database: the file is kept aside and a new one started; sessions it listed that could not be read are not sent again unless an operator owes them again (see the README's fleet store)"
            );
            (sessions, OwedFile::Writable)
        }
        Err(e) => {
            error!(
                path = %path.display(),
                reason = %why,
                error = %e,
                "cannot read the sessions the last run owed to the recording database, nor move the file aside: it is left as it is, and the sessions owed are not saved until it is fixed or moved"
            );
            (sessions, OwedFile::Unreadable)
        }
    }
}

/// The sessions listed in the [`OWED_FILE`] at `path`; none when there is
/// none. `Err`: why it cannot be read whole, and the ids that could be
/// read of it.
fn read_owed(path: &Path) -> Result<Vec<String>, (String, Vec<String>)> {
    let data = match read_no_link(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err((
                "it is a symbolic link, which is not followed".into(),
                Vec::new(),
            ));
        }
        Err(e) => return Err((e.to_string(), Vec::new())),
    };
    let text = String::from_utf8_lossy(&data);
    let mut sessions = Vec::new();
    let mut garbled = Vec::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if super::files::is_id(line) {
            sessions.push(line.to_owned());
        } else {
            garbled.push(line);
        }
    }
    match garbled.first() {
        None => Ok(sessions),
        Some(first) => {
            let first: String = first.chars().take(80).collect();
            Err((
                format!(
                    "{} of its lines are not session ids (the first: {first:?})",
                    garbled.len()
                ),
                sessions,
            ))
        }
    }
}

/// A regular file's bytes, never through a symbolic link, bounded.
fn read_no_link(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    crate::regular_file::check(&file)?;
    let mut data = Vec::new();
    file.take(MAX_OWED_FILE + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_OWED_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("it is larger than {MAX_OWED_FILE} bytes"),
        ));
    }
    Ok(data)
}

/// Moves `dir`'s [`OWED_FILE`] (whatever it is: a link is moved, not
/// followed) to a name of its own beside it, never over an earlier one.
fn set_aside(dir: &Path, now: std::time::SystemTime) -> std::io::Result<PathBuf> {
    // "2026-11-29T09:51:11Z" → "20261129T095111Z", like session ids.
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    for n in 0..100 {
        let name = match n {
            0 => format!("{OWED_FILE}.unreadable-{stamp}"),
            n => format!("{OWED_FILE}.unreadable-{stamp}-{n}"),
        };
        let aside = dir.join(name);
        // Only this process writes here; an earlier one is kept.
        if aside.symlink_metadata().is_err() {
            std::fs::rename(dir.join(OWED_FILE), &aside)?;
            return Ok(aside);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "a hundred files kept aside in the same second",
    ))
}

/// Reads the lines of `session`'s recording at `path` from `at` on, up to
/// `max_rows` rows and about `max_bytes`, each checked to be the next line
/// of that session's chain; `at` moves past what was read. A last line
/// without its newline (being written) ends the read, for next time.
pub fn read_rows(
    path: &Path,
    session: &str,
    at: &mut Progress,
    max_rows: usize,
    max_bytes: usize,
) -> std::io::Result<(Vec<Row>, Stop)> {
    use std::io::{BufRead, Read, Seek};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        // Not followed: the recording itself, nothing it points to.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    crate::regular_file::check(&file)?;
    file.seek(std::io::SeekFrom::Start(at.offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut rows = Vec::new();
    let mut bytes = 0;
    let mut line = Vec::new();
    loop {
        if rows.len() >= max_rows || bytes >= max_bytes {
            return Ok((rows, Stop::Full));
        }
        line.clear();
        let n = reader
            .by_ref()
            .take(super::files::MAX_RECORDING_BYTES)
            .read_until(b'\n', &mut line)?;
        let Some(whole) = line.strip_suffix(b"\n") else {
            return Ok((rows, Stop::End));
        };
        match row_of(whole, session, at) {
            Ok(row) => {
                bytes += n;
                at.offset += n as u64;
                at.prev.clone_from(&row.hash);
                at.seq += 1;
                rows.push(row);
            }
            Err(why) => {
                return Ok((
                    rows,
                    Stop::Broken(format!("line {} (seq {}): {why}", at.seq + 1, at.seq)),
                ));
            }
        }
    }
}

/// `line` as a row, if it is the next line of `session`'s chain after `at`.
fn row_of(line: &[u8], session: &str, at: &Progress) -> Result<Row, String> {
    let (hash, prev, raw) = super::chain::split(line).map_err(str::to_owned)?;
    if prev != at.prev {
        return Err("prev_hash does not match the line before".into());
    }
    if super::chain::hash(prev, raw) != hash {
        return Err("the hash does not match the event".into());
    }
    let event: super::event::Event =
        serde_json::from_slice(raw).map_err(|e| format!("the event is not valid: {e}"))?;
    if event.session != session {
        return Err(format!("the event belongs to session {}", event.session));
    }
    if event.seq != at.seq {
        return Err(format!("seq is {} where {} belongs", event.seq, at.seq));
    }
    Ok(Row {
        session: event.session,
        seq: i64::try_from(event.seq).map_err(|e| e.to_string())?,
        wall: event.wall,
        kind: event.body.kind(),
        prev_hash: prev.to_owned(),
        hash: hash.to_owned(),
        raw: std::str::from_utf8(raw)
            .map_err(|e| e.to_string())?
            .to_owned(),
    })
}

/// Session ids in the table, oldest first. Every session with any row, not
/// only those with a session start (found in review: deleting a session's
/// `seq = 0` row hid the rest of it from `verify --all`; listed, it reads
/// as tampered).
pub async fn sessions(client: &Client) -> Result<Vec<String>, String> {
    let rows = client
        .query(
            "SELECT session FROM chokepoint_events GROUP BY session ORDER BY min(wall), session",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    rows.iter().map(|r| text(r, 0, "session")).collect()
}

/// Column `i` of a row as text. The table is only as sound as whoever can
/// write it, and `CREATE TABLE IF NOT EXISTS` keeps an altered one: a NULL
/// or a non-text column, on which `Row::get` panics, is an error naming it.
fn text(row: &tokio_postgres::Row, i: usize, column: &str) -> Result<String, String> {
    match row.try_get::<_, Option<String>>(i) {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(format!("the recording database has a NULL {column}")),
        Err(e) => Err(format!("the recording database's {column} column: {e}")),
    }
}

/// Up to `limit` lines of `session` from seq `from` on (`None`: from its
/// first row, whatever its seq), rebuilt exactly as in its file, with
/// their seqs: a recording is read a page at a time, as its file is read
/// a line at a time. The page starts at the last page's last seq, not
/// after it, so a second row of that seq (a table whose key was dropped)
/// is read too, and breaks the chain (found in review: at a page's end it
/// went unseen).
pub async fn page(
    client: &Client,
    session: &str,
    from: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, String> {
    // Two statements, not one with `$2 IS NULL OR`: each page must start
    // in the primary key's index where the last one ended, not scan the
    // session from its start.
    let rows = match from {
        None => {
            client
                .query(
                    "SELECT seq, hash, prev_hash, raw FROM chokepoint_events \
                     WHERE session = $1 ORDER BY seq LIMIT $2",
                    &[&session, &limit],
                )
                .await
        }
        Some(from) => {
            client
                .query(
                    "SELECT seq, hash, prev_hash, raw FROM chokepoint_events \
                     WHERE session = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                    &[&session, &from, &limit],
                )
                .await
        }
    }
    .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            let seq = row
                .try_get::<_, i64>(0)
                .map_err(|e| format!("the recording database's seq column: {e}"))?;
            let (hash, prev, raw) = (
                text(row, 1, "hash")?,
                text(row, 2, "prev_hash")?,
                text(row, 3, "raw")?,
            );
            // The stored hash, not a recomputed one: verify must see what is there.
            Ok((seq, super::chain::assemble(&hash, &prev, raw.as_bytes())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(session: &str, seq: i64) -> Row {
        Row {
            session: session.to_owned(),
            seq,
            wall: String::new(),
            kind: "statement",
            prev_hash: String::new(),
            hash: String::new(),
            raw: "{}".into(),
        }
    }

    fn settings() -> SinkSettings {
        SinkSettings {
            conninfo: "host=127.0.0.1 port=1".into(),
            password_file: None,
        }
    }

    /// What a fake database received: every statement's rows, in order.
    type Received = Arc<Mutex<Vec<Vec<(String, i64)>>>>;

    /// A database that refuses any statement holding a row whose event
    /// says "poison", as a CHECK constraint would, and takes the rest.
    fn poisoned(sink: &mut Sink) -> Received {
        let received = Received::default();
        let log = Arc::clone(&received);
        sink.fake = Some(Box::new(move |rows: &[Row]| {
            if rows.iter().any(|r| r.raw.contains("poison")) {
                return Err(Failure::Rejected("violates check constraint".into()));
            }
            let mut log = log.lock().unwrap();
            log.push(rows.iter().map(|r| (r.session.clone(), r.seq)).collect());
            Ok(())
        }));
        received
    }

    fn handed_over(sink: &mut Sink, rows: Vec<Row>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        sink.queue(tx).send(rows);
        while let Ok(rows) = rx.try_recv() {
            sink.backlog.extend(rows);
        }
    }

    /// Data exceptions, integrity violations and program limits are the
    /// rows' fault; the rest passes with time or an operator.
    #[test]
    fn only_what_the_rows_hold_is_a_permanent_refusal() {
        for code in [
            SqlState::INVALID_DATETIME_FORMAT,
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::CHECK_VIOLATION,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
        ] {
            assert!(rejects_rows(&code), "{code:?}");
        }
        for code in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::DISK_FULL,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::QUERY_CANCELED,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_TABLE,
            SqlState::RAISE_EXCEPTION,
            SqlState::from_code("XX000"),
        ] {
            assert!(!rejects_rows(&code), "{code:?}");
        }
    }

    /// A row the database always refuses no longer holds up the sink for
    /// ever: its session is owed (and the refusal counted), every other
    /// row of it and of the sessions after it arrives, in about log2 of
    /// the batch's statements each.
    #[tokio::test]
    async fn a_row_the_database_refuses_owes_its_session_and_the_rest_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(settings(), dir.path(), 100_000, Vec::new());
        let received = poisoned(&mut sink);
        let mut rows: Vec<Row> = (0..12_000)
            .map(|i| row(&format!("s{}", i / 3000), i % 3000))
            .collect();
        rows[4_321].raw = "{\"poison\":1}".into();
        rows[9_000].raw = "{\"poison\":2}".into();
        handed_over(&mut sink, rows);
        sink.flush().await;

        assert!(!sink.failing && sink.backlog.is_empty());
        assert_eq!(sink.shared.queued.load(Ordering::Relaxed), 0);
        assert_eq!(sink.shared.rejected.load(Ordering::Relaxed), 2);
        let statements = received.lock().unwrap();
        let arrived: Vec<(String, i64)> = statements.iter().flatten().cloned().collect();
        let expected: Vec<(String, i64)> = (0..12_000)
            .filter(|i| *i != 4_321 && *i != 9_000)
            .map(|i| (format!("s{}", i / 3000), i % 3000))
            .collect();
        assert_eq!(arrived, expected);
        // 3 batches of 5,000 rows (the last 2,000), two of them halved
        // down to one row: far from a statement per row.
        assert!(statements.len() < 60, "{} statements", statements.len());
        // Nothing is left out for good: their sessions are owed, to be
        // sent again from their files after a back-off.
        let owed: Vec<String> = sink.shared.owed().queue.iter().cloned().collect();
        assert_eq!(owed, ["s1", "s3"]);
        assert!(sink.refused.contains_key("s1") && sink.refused.contains_key("s3"));
    }

    /// Found in review: a change to the table (a NOT NULL column, a
    /// foreign key) refuses every row, and must neither cost two
    /// statements a row nor lose them: the search stops early, and every
    /// session is owed.
    #[tokio::test]
    async fn a_table_refusing_every_row_loses_none_and_costs_few_statements() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(settings(), dir.path(), 100_000, Vec::new());
        let received = poisoned(&mut sink);
        let rows: Vec<Row> = (0..5_000)
            .map(|i| {
                let mut r = row(&format!("s{}", i / 500), i % 500);
                r.raw = "{\"poison\":1}".into();
                r
            })
            .collect();
        handed_over(&mut sink, rows);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let mut inner = sink.fake.take().unwrap();
        sink.fake = Some(Box::new(move |rows: &[Row]| {
            counted.fetch_add(1, Ordering::Relaxed);
            inner(rows)
        }));
        sink.flush().await;
        assert!(received.lock().unwrap().is_empty());
        let calls = calls.load(Ordering::Relaxed);
        assert!(calls <= MAX_SPLIT_STATEMENTS + 2, "{calls} statements");
        let mut owed: Vec<String> = sink.shared.owed().queue.iter().cloned().collect();
        owed.sort();
        let all: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        assert_eq!(owed, all);
        assert!(!sink.failing && sink.backlog.is_empty());
    }

    /// A transient failure while a refused row is being looked for keeps
    /// what is left for the next try, and what was done is not done
    /// again: the refused row is counted once.
    #[tokio::test]
    async fn a_transient_failure_while_halving_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(settings(), dir.path(), 100_000, Vec::new());
        let received = Received::default();
        let log = Arc::clone(&received);
        let mut calls = 0;
        sink.fake = Some(Box::new(move |rows: &[Row]| {
            calls += 1;
            // The connection drops at the sixth statement.
            if calls == 6 {
                return Err(Failure::Transient("connection closed".into()));
            }
            if rows.iter().any(|r| r.raw.contains("poison")) {
                return Err(Failure::Rejected("violates check constraint".into()));
            }
            log.lock()
                .unwrap()
                .push(rows.iter().map(|r| (r.session.clone(), r.seq)).collect());
            Ok(())
        }));
        let mut rows: Vec<Row> = (0..8).map(|i| row("s", i)).collect();
        rows[0].raw = "{\"poison\":1}".into();
        handed_over(&mut sink, rows);
        // 0..8, 0..4, 0..2 refused, 0..1 refused twice (the second time
        // with its line as a JSON string): owed; 1..2: the drop.
        sink.flush().await;
        assert!(sink.failing);
        assert_eq!(sink.backlog.len(), 7);
        assert_eq!(sink.shared.queued.load(Ordering::Relaxed), 7);
        sink.flush().await;
        // 1..8 in one statement.
        assert!(!sink.failing && sink.backlog.is_empty());
        assert_eq!(sink.shared.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(sink.shared.queued.load(Ordering::Relaxed), 0);
        let arrived: Vec<i64> = received
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|r| r.1)
            .collect();
        assert_eq!(arrived, [1, 2, 3, 4, 5, 6, 7]);
    }

    /// Lines `from..to` of `session`'s chain after `prev` (the last a seal
    /// when `sealed`), and the last one's hash.
    fn chained(session: &str, from: u64, to: u64, prev: &str, sealed: bool) -> (Vec<u8>, String) {
        use super::super::event::{Body, Event};
        let mut out = Vec::new();
        let mut prev = prev.to_owned();
        for seq in from..to {
            let body = if sealed && seq + 1 == to {
                Body::Seal {
                    final_hash: prev.clone(),
                    public_key: String::new(),
                    signature: String::new(),
                    recovered: None,
                }
            } else {
                Body::SessionEnd {
                    bytes_up: 0,
                    bytes_down: 0,
                    statements: 0,
                    denied: 0,
                    error: None,
                }
            };
            let event = Event {
                seq,
                session: session.to_owned(),
                wall: "2026-11-29T00:00:00.000000Z".into(),
                mono_us: 0,
                body,
            };
            prev = super::super::chain::append_line(
                &mut out,
                &prev,
                &serde_json::to_vec(&event).unwrap(),
            );
        }
        (out, prev)
    }

    /// Writes the recording of session number `n` with `events` lines;
    /// its id and last hash.
    fn recorded(dir: &Path, n: usize, events: u64, sealed: bool) -> (String, String) {
        let id = format!("20261129T000000Z-{n:012x}");
        let folder = dir.join("2026/11/29");
        std::fs::create_dir_all(&folder).unwrap();
        let (data, last) = chained(&id, 0, events, super::super::chain::GENESIS, sealed);
        std::fs::write(folder.join(format!("{id}.jsonl")), data).unwrap();
        (id, last)
    }

    /// Found in review: the re-send progress of every session ever owed
    /// stayed in memory for the life of the daemon. A session whose seal
    /// has gone (re-sent, or in the backlog) is forgotten; only those
    /// still being recorded are kept, and never more than a bound.
    #[tokio::test]
    async fn the_resend_progress_stays_bounded_over_many_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(settings(), dir.path(), 100_000, Vec::new());
        let received = poisoned(&mut sink);
        // Many sessions owed, each re-sent whole, seal included.
        for n in 0..500 {
            let (id, _) = recorded(dir.path(), n, 5, true);
            sink.shared.owed().add(id);
        }
        sink.flush().await;
        assert!(!sink.failing && sink.shared.owed().queue.is_empty());
        assert_eq!(received.lock().unwrap().iter().flatten().count(), 500 * 5);
        assert!(sink.progress.is_empty(), "{} kept", sink.progress.len());

        // Sessions still open are kept, to resume where they stood...
        let open: Vec<(String, String)> = (1_000..1_003)
            .map(|n| recorded(dir.path(), n, 4, false))
            .collect();
        for (id, _) in &open {
            sink.shared.owed().add(id.clone());
        }
        sink.flush().await;
        assert_eq!(sink.progress.len(), 3);
        assert!(sink.progress.values().all(|at| at.seq == 4));
        // ...until their seals go by in the backlog.
        for (id, last) in &open {
            let (seal, _) = chained(id, 4, 5, last, true);
            let path = dir.path().join(format!("2026/11/29/{id}.jsonl"));
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut file, &seal).unwrap();
            let mut at = sink.progress[id].clone();
            let (rows, stop) = read_rows(&path, id, &mut at, 10, 1 << 20).unwrap();
            assert_eq!((rows.len(), stop), (1, Stop::End));
            handed_over(&mut sink, rows);
        }
        sink.flush().await;
        assert!(sink.progress.is_empty(), "{} kept", sink.progress.len());

        // Recordings that never get a seal in this run (they failed): the
        // map stops at its bound.
        for n in 2_000..2_000 + 3 * MAX_PROGRESS {
            let (id, _) = recorded(dir.path(), n, 2, false);
            sink.shared.owed().add(id);
            sink.flush().await;
            assert!(sink.progress.len() <= MAX_PROGRESS);
        }
    }

    /// The files in `dir` named like `prefix`, with their bytes (a link's
    /// target name, a directory's entries as "dir").
    fn kept_aside(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("fleet-owed.unreadable-")
            })
            .map(|e| {
                let path = e.path();
                let meta = path.symlink_metadata().unwrap();
                let data = if meta.file_type().is_symlink() {
                    std::fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes()
                } else if meta.is_dir() {
                    b"dir".to_vec()
                } else {
                    std::fs::read(&path).unwrap()
                };
                (e.file_name().to_string_lossy().into_owned(), data)
            })
            .collect();
        found.sort();
        found
    }

    fn owed_now(sink: &Sink) -> Vec<String> {
        sink.shared.owed().queue.iter().cloned().collect()
    }

    /// Found in review: a `fleet-owed` the gateway could not read was
    /// taken as empty and written over at the next save. Garbled, a
    /// directory or a link, it is now kept aside for an operator (what
    /// could be read of it still owed), and a new one is started.
    #[test]
    fn an_unreadable_owed_list_is_kept_aside_not_overwritten() {
        let good = "20261129T000000Z-0000000000aa";
        let path = |dir: &tempfile::TempDir| dir.path().join(OWED_FILE);

        // Garbled: the ids in it are still owed.
        let dir = tempfile::tempdir().unwrap();
        let mut garbled = format!("{good}\n").into_bytes();
        garbled.extend_from_slice(b"\x00\x01garbage\xff\n");
        std::fs::write(path(&dir), &garbled).unwrap();
        let why = read_owed(&path(&dir)).unwrap_err();
        assert!(
            why.0.contains("1 of its lines are not session ids"),
            "{why:?}"
        );
        let mut sink = Sink::new(settings(), dir.path(), 10, Vec::new());
        assert_eq!(owed_now(&sink), [good]);
        let kept = kept_aside(dir.path());
        assert_eq!(kept.len(), 1);
        assert!(kept[0].0.starts_with("fleet-owed.unreadable-2"), "{kept:?}");
        assert_eq!(kept[0].1, garbled);
        sink.save_owed();
        assert_eq!(
            std::fs::read_to_string(path(&dir)).unwrap(),
            format!("{good}\n")
        );
        assert_eq!(kept_aside(dir.path()), kept);

        // A directory, and a link (not followed: moved as it is).
        for make in ["dir", "link"] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("elsewhere");
            std::fs::write(&target, format!("{good}\n")).unwrap();
            if make == "dir" {
                std::fs::create_dir(path(&dir)).unwrap();
                std::fs::write(path(&dir).join("x"), b"").unwrap();
            } else {
                std::os::unix::fs::symlink(&target, path(&dir)).unwrap();
            }
            let why = read_owed(&path(&dir)).unwrap_err().0;
            let expected = if make == "dir" {
                "a directory"
            } else {
                "a symbolic link"
            };
            assert!(why.contains(expected), "{why}");
            let mut sink = Sink::new(settings(), dir.path(), 10, Vec::new());
            assert!(owed_now(&sink).is_empty());
            sink.shared
                .owed()
                .add("20261129T000000Z-0000000000bb".into());
            sink.save_owed();
            assert!(path(&dir).symlink_metadata().unwrap().is_file());
            let kept = kept_aside(dir.path());
            assert_eq!(kept.len(), 1, "{kept:?}");
            if make == "link" {
                assert_eq!(kept[0].1, target.as_os_str().as_encoded_bytes());
            }
            assert_eq!(
                std::fs::read_to_string(&target).unwrap(),
                format!("{good}\n")
            );
        }

        // Two starts in the same second keep both.
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        for garbage in ["one?", "two?"] {
            std::fs::write(path(&dir), garbage).unwrap();
            let (sessions, file) = load_owed(dir.path(), now);
            assert!(sessions.is_empty() && file == OwedFile::Writable);
        }
        let kept: Vec<Vec<u8>> = kept_aside(dir.path()).into_iter().map(|k| k.1).collect();
        assert_eq!(kept, [b"one?".to_vec(), b"two?".to_vec()]);

        // None at all: nothing to say.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_owed(&path(&dir)), Ok(Vec::new()));
        assert_eq!(load_owed(dir.path(), now), (Vec::new(), OwedFile::Writable));
    }

    /// Found in review: with the sink stuck in a send to a database that
    /// never answers, the writer's rows piled up in the channel without
    /// bound. Past the backlog the writer hands over session ids instead.
    #[test]
    fn a_stuck_sink_holds_no_more_rows_than_its_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SinkSettings {
            conninfo: "host=127.0.0.1 port=1".into(),
            password_file: None,
        };
        let sink = Sink::new(settings, dir.path(), 10, vec!["a-before".into()]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let queue = sink.queue(tx);
        for batch in 0..1_000 {
            let session = format!("s{}", batch % 3);
            queue.send((0..4).map(|i| row(&session, batch * 4 + i)).collect());
        }
        let mut held = 0;
        while let Ok(rows) = rx.try_recv() {
            held += rows.len();
        }
        assert_eq!(held, 8, "two batches of four fit in ten");
        let owed = sink.shared.owed();
        let owed: Vec<&str> = owed.queue.iter().map(String::as_str).collect();
        // Each owed once, whatever the number of rows left out.
        assert_eq!(owed, ["a-before", "s2", "s0", "s1"]);
    }

    /// Rows of a MiB each (a result's sample) are bounded by their bytes,
    /// whatever the row count allows (found in review).
    #[test]
    fn the_bound_counts_bytes_too() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SinkSettings {
            conninfo: "host=127.0.0.1 port=1".into(),
            password_file: None,
        };
        let sink = Sink::new(settings, dir.path(), 1_000_000, Vec::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let queue = sink.queue(tx);
        for i in 0..300 {
            let mut big = row("s", i);
            big.raw = "x".repeat(1 << 20);
            queue.send(vec![big]);
        }
        let mut bytes = 0;
        while let Ok(rows) = rx.try_recv() {
            bytes += rows.iter().map(Row::weight).sum::<usize>();
        }
        assert!(
            bytes <= MAX_QUEUED_BYTES && bytes > MAX_QUEUED_BYTES - (2 << 20),
            "{bytes}"
        );
        assert_eq!(sink.shared.owed().queue.len(), 1);
    }
}
