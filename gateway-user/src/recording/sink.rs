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
use tokio_postgres::{Client, Config, NoTls};
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
}

impl Sink {
    /// A sink for `settings` keeping at most `max_backlog` rows in memory.
    /// `owed`: sessions to send again from their files (those the last run
    /// left open), with those the last run still owed.
    pub fn new(settings: SinkSettings, dir: &Path, max_backlog: usize, owed: Vec<String>) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        let mut first = Owed::default();
        for session in owed.into_iter().chain(load_owed(dir)) {
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
            }),
            progress: HashMap::new(),
            dir: dir.to_path_buf(),
            failing: false,
            retry: Duration::from_secs(1),
            next_try: tokio::time::Instant::now(),
            saved: None,
            save_failed: false,
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
            if let Err(e) = self.send(&backlog[sent..sent + n]).await {
                // Nothing joined the backlog meanwhile: only this task fills it.
                self.release(backlog.drain(..sent));
                self.backlog = backlog;
                self.failed(&e);
                return;
            }
            sent += n;
        }
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
            let mut at = self.progress.remove(&session).unwrap_or_default();
            let result = self.resend(&session, &mut at).await;
            match result {
                Ok(None) => {
                    info!(
                        session,
                        "sent a session to the recording database again from its recording"
                    );
                    // Resumed from here should it be owed again.
                    self.progress.insert(session, at);
                }
                Ok(Some(why)) => {
                    error!(session, reason = %why, "a recording no longer chains where the recording database needs it: the rest is not sent, and the database keeps the session incomplete; run `chokepoint sessions verify` on it");
                }
                Err(Resend::File(why)) => {
                    // Retention may have taken it meanwhile.
                    warn!(session, error = %why, "cannot read a recording to send it to the recording database again; the database keeps it incomplete");
                }
                Err(Resend::Database(e)) => {
                    self.progress.insert(session.clone(), at);
                    self.shared.owed().add(session);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends the lines of `session`'s recording from `at` on, a batch at
    /// a time, each checked to chain onto the last: the file is the record
    /// of truth, but one altered since it was written must not become the
    /// fleet copy (found in review). `Ok(Some(why))`: a line that does not
    /// chain, where sending stopped.
    async fn resend(&mut self, session: &str, at: &mut Progress) -> Result<Option<String>, Resend> {
        let path = super::files::find(&self.dir, session).map_err(Resend::File)?;
        loop {
            let mut next = at.clone();
            let (rows, stop) = read_rows(&path, session, &mut next, BATCH_ROWS, BATCH_BYTES)
                .map_err(|e| Resend::File(format!("{}: {e}", path.display())))?;
            self.send(&rows).await.map_err(Resend::Database)?;
            *at = next;
            match stop {
                Stop::Full => {}
                Stop::End => return Ok(None),
                Stop::Broken(why) => return Ok(Some(why)),
            }
        }
    }

    /// Sends `rows` in one statement (connecting first if needed), within
    /// [`SEND_TIMEOUT`].
    async fn send(&mut self, rows: &[Row]) -> Result<(), String> {
        tokio::time::timeout(SEND_TIMEOUT + Duration::from_secs(1), self.send_now(rows))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", SEND_TIMEOUT.as_secs())))
    }

    async fn send_now(&mut self, rows: &[Row]) -> Result<(), String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = connect(&self.settings).await?;
            // Ended by the server too: a timed-out INSERT left running
            // would commit later and pile up behind the retries.
            client
                .batch_execute(&format!(
                    "SET statement_timeout = {}; {SCHEMA}",
                    SEND_TIMEOUT.as_millis()
                ))
                .await
                .map_err(|e| format!("creating the table: {e}"))?;
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
        client
            .execute(
                "INSERT INTO chokepoint_events (session, seq, host, wall, type, prev_hash, hash, raw, event) \
                 SELECT s, q, $3, w::timestamptz, t, p, h, r, r::jsonb \
                 FROM unnest($1::text[], $2::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
                   AS u(s, q, w, t, p, h, r) \
                 ON CONFLICT (session, seq) DO NOTHING",
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
                Some(db) => db.message().to_owned(),
                None => e.to_string(),
            })?;
        Ok(())
    }

    /// Writes the sessions the database still lacks rows of beside the
    /// recordings, when that changed: owed ones, and those of the rows in
    /// the backlog (the daemon does not wait for this task when it
    /// stops). A gateway stopped during an outage sends them at its next
    /// start.
    fn save_owed(&mut self) {
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
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &path));
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

/// Why a re-send stopped.
enum Resend {
    /// The recording could not be found or read.
    File(String),
    Database(String),
}

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

/// The sessions the last run still owed, from [`OWED_FILE`].
fn load_owed(dir: &Path) -> Vec<String> {
    match crate::regular_file::read_bounded(&dir.join(OWED_FILE), 64 << 20) {
        Ok(data) => String::from_utf8_lossy(&data)
            .lines()
            .filter(|id| super::files::is_id(id))
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
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

/// Up to `limit` lines of `session` after seq `after` (`None`: from
/// its first row, whatever its seq), rebuilt exactly as in its file, with
/// their seqs: a recording is read a page at a time, as its file is read
/// a line at a time.
pub async fn page(
    client: &Client,
    session: &str,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, String> {
    // Two statements, not one with `$2 IS NULL OR`: each page must start
    // in the primary key's index where the last one ended, not scan the
    // session from its start.
    let rows = match after {
        None => {
            client
                .query(
                    "SELECT seq, hash, prev_hash, raw FROM chokepoint_events \
                     WHERE session = $1 ORDER BY seq LIMIT $2",
                    &[&session, &limit],
                )
                .await
        }
        Some(after) => {
            client
                .query(
                    "SELECT seq, hash, prev_hash, raw FROM chokepoint_events \
                     WHERE session = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&session, &after, &limit],
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
