//! The fleet sink: every event, chain fields and exact bytes included, also
//! goes to a PostgreSQL table, so the recordings of many runners can be
//! searched in one place and verified from there (`chokepoint sessions
//! --store`). Local files stay the record of truth: when the database is
//! unreachable the writer keeps the rows (bounded) and retries, and the
//! sessions go on; rows that outgrow the backlog are sent again from the
//! files once the database answers.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{info, warn};

/// `[recording] postgres` and its password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// libpq-style connection string (`host=… port=… user=… dbname=…`).
    pub conninfo: String,
    pub password_file: Option<PathBuf>,
}

/// Rows kept in memory for a database that does not answer, unless
/// `[recording] postgres_backlog` says otherwise.
pub const DEFAULT_BACKLOG: usize = 100_000;

/// Longest one send may take: a server that accepts the connection but
/// never answers must count as down, or rows pile up in the channel
/// behind it with no bound.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows per INSERT when a session is sent again from its file.
const RESEND_BATCH: usize = 10_000;

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

/// The writer's side: a connection made on demand and a backlog.
pub struct Sink {
    settings: SinkSettings,
    host: String,
    client: Option<Client>,
    backlog: Vec<Row>,
    max_backlog: usize,
    /// Sessions whose rows left a full backlog unsent: each is sent again
    /// whole from its file once the database answers. Found in review:
    /// the rows were simply dropped, so a long database outage made those
    /// sessions read TAMPERED there for ever. Ids only, so memory stays
    /// bounded however long the outage lasts.
    owed: BTreeSet<String>,
    /// The recordings directory, where the owed sessions' files are.
    dir: PathBuf,
    failing: bool,
}

impl Sink {
    pub fn new(settings: SinkSettings, dir: &Path, max_backlog: usize) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        Self {
            settings,
            host,
            client: None,
            backlog: Vec::new(),
            max_backlog: max_backlog.max(1),
            owed: BTreeSet::new(),
            dir: dir.to_path_buf(),
            failing: false,
        }
    }

    /// Runs on the writer's runtime as its own task, so a slow or absent
    /// database never holds up the local files: batches come in over
    /// `rx`, a failed send is retried every second, and what is left is
    /// tried once more when `rx` closes.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Vec<Row>>) {
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(rows) = batch else { break };
                    for row in rows {
                        self.push(row);
                    }
                    self.flush().await;
                }
                _ = retry.tick(), if self.behind() => self.flush().await,
            }
        }
        self.flush().await;
    }

    /// Whether anything waits for the database.
    fn behind(&self) -> bool {
        !self.backlog.is_empty() || !self.owed.is_empty()
    }

    fn push(&mut self, row: Row) {
        if self.backlog.len() >= self.max_backlog {
            let dropped = self.backlog.len();
            self.owed
                .extend(self.backlog.drain(..).map(|row| row.session));
            warn!(
                dropped,
                sessions = self.owed.len(),
                "the recording database has not answered for {dropped} events; they leave memory, and their sessions go again from the local recordings when it answers"
            );
        }
        self.backlog.push(row);
    }

    /// Sends the backlog in one statement (kept on failure), then the
    /// sessions owed from their files.
    async fn flush(&mut self) {
        if !self.behind() {
            return;
        }
        let rows = std::mem::take(&mut self.backlog);
        if let Err(e) = self.send(&rows).await {
            self.backlog = rows;
            self.failed(&e);
            return;
        }
        if self.failing {
            info!("the recording database answers again");
        }
        self.failing = false;
        self.resend_owed().await;
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
    }

    /// Sends each owed session again, every line of its file; the table
    /// keeps the rows it has already. A session stays owed until all of it
    /// went, so a failure part-way retries it whole.
    async fn resend_owed(&mut self) {
        while let Some(session) = self.owed.first().cloned() {
            let data = match super::files::find(&self.dir, &session)
                .and_then(|path| super::files::read(&path).map_err(|e| e.to_string()))
            {
                Ok(data) => data,
                Err(e) => {
                    // Retention may have taken it meanwhile; nothing
                    // else holds its rows.
                    warn!(session, error = %e, "cannot read a recording to send it to the recording database again; the database keeps it incomplete");
                    self.owed.remove(&session);
                    continue;
                }
            };
            for rows in rows_of(&data).chunks(RESEND_BATCH) {
                if let Err(e) = self.send(rows).await {
                    self.failed(&e);
                    return;
                }
            }
            info!(
                session,
                "sent a session to the recording database again from its recording"
            );
            self.owed.remove(&session);
        }
    }

    /// Sends `rows` in one statement (connecting first if needed), within
    /// [`SEND_TIMEOUT`].
    async fn send(&mut self, rows: &[Row]) -> Result<(), String> {
        tokio::time::timeout(SEND_TIMEOUT, self.send_now(rows))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", SEND_TIMEOUT.as_secs())))
    }

    async fn send_now(&mut self, rows: &[Row]) -> Result<(), String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = connect(&self.settings).await?;
            client
                .batch_execute(SCHEMA)
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
}

/// The rows of a recording's lines as they are on disk, for a recording
/// the gateway sealed at start (found in review: the seal recovery writes
/// went to the file only, so the database read every crashed session as
/// unsealed for ever, and rows the writer had not sent yet were missing).
/// The table keeps the first row of each `(session, seq)`, so sending
/// rows it has already is harmless. Lines that are no recording line (a
/// damaged file) are left out: the database then reads tampered too.
pub fn rows_of(data: &[u8]) -> Vec<Row> {
    data.split(|&b| b == b'\n')
        .filter_map(|line| {
            let (hash, prev, raw) = super::chain::split(line).ok()?;
            let event: super::event::Event = serde_json::from_slice(raw).ok()?;
            Some(Row {
                session: event.session,
                seq: i64::try_from(event.seq).ok()?,
                wall: event.wall,
                kind: event.body.kind(),
                prev_hash: prev.to_owned(),
                hash: hash.to_owned(),
                raw: std::str::from_utf8(raw).ok()?.to_owned(),
            })
        })
        .collect()
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

/// A session's lines rebuilt exactly as in its file, for [`super::verify`].
pub async fn recording(client: &Client, session: &str) -> Result<Vec<u8>, String> {
    let rows = client
        .query(
            "SELECT hash, prev_hash, raw FROM chokepoint_events WHERE session = $1 ORDER BY seq",
            &[&session],
        )
        .await
        .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Err(format!("no session {session:?} in the recording database"));
    }
    let mut out = Vec::new();
    for row in rows {
        let (hash, prev, raw) = (
            text(&row, 0, "hash")?,
            text(&row, 1, "prev_hash")?,
            text(&row, 2, "raw")?,
        );
        // The stored hash, not a recomputed one: verify must see what is there.
        out.extend_from_slice(&super::chain::assemble(&hash, &prev, raw.as_bytes()));
    }
    Ok(out)
}
