//! Session recording: every guarded connection becomes an append-only,
//! hash-chained JSON-lines file, sealed with the host's ed25519 key when
//! the session ends.
//!
//! * [`event`]: what a line holds (start, login, statement, result, end, seal);
//! * [`chain`]: the line format and its SHA-256 chain;
//! * [`keys`]: the host's sealing key;
//! * `writer`: the thread that writes, batches and fsyncs;
//! * [`verify`]: checking a recording, naming the first bad line;
//! * [`ledger`]: the host's signed list of ended recordings, which tells
//!   a recording cut short from one whose gateway stopped;
//! * [`recover`]: at start, sealing what the previous run left unsealed;
//! * [`files`]: where recordings are and how to find one;
//! * [`retention`]: removing old recordings, never an active one;
//! * [`sink`]: the optional PostgreSQL copy for a fleet.
//!
//! Sessions hand events over without waiting: the writer assigns `seq`,
//! chains and writes. Only the session start waits for its line to be
//! written, so a session that cannot be recorded (full disk, permissions)
//! is refused before any command; a failure later marks the session and
//! the protocol handler refuses every command after it (fail closed).
//!
//! ```no_run
//! # async fn demo(settings: &chokepoint::policy::RecordingSettings, start: chokepoint::recording::Body) {
//! use chokepoint::recording::{Body, Recorder};
//! let recorder = Recorder::start(settings).expect("keys and directory");
//! let session = recorder.open(start).await;
//! if session.healthy().is_ok() {
//!     session.record(Body::Login { role: "app".into(), database: "orders".into(), upstream: "10.0.0.5:5432".into() });
//! }
//! session.close(Body::SessionEnd { bytes_up: 0, bytes_down: 0, statements: 0, denied: 0, error: None });
//! # }
//! ```
pub mod chain;
pub mod event;
pub mod files;
pub mod keys;
pub mod ledger;
pub mod recover;
pub mod retention;
pub mod sample;
pub mod sink;
pub mod verify;
mod writer;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Instant, SystemTime},
};

use tokio::sync::oneshot;
use tracing::{error, warn};

pub use event::{Body, Event, Identity};

use crate::policy::RecordingSettings;

/// Events handed to the writer and not yet written, over all sessions.
/// Past this the disk is not keeping up, and new events fail their
/// session rather than grow memory without bound.
const MAX_INFLIGHT: usize = 1 << 16;

/// Bytes of events (statement texts, result samples) waiting for the
/// writer, over all sessions and per session. Counting events alone let
/// one session queue a 16 MiB text per Bind of a prepared statement; past
/// its own budget a session fails before it can fail everyone's.
const MAX_INFLIGHT_BYTES: usize = 256 << 20;
const MAX_SESSION_INFLIGHT_BYTES: usize = 64 << 20;

/// What one event holds while it waits for the writer, counted against
/// its session and all sessions, and given back when the event is dropped
/// (written, or never sent).
pub(crate) struct Charge {
    bytes: usize,
    session: Arc<AtomicUsize>,
    all: Arc<AtomicUsize>,
}

impl Charge {
    /// Takes `bytes` from both budgets, or says which one is spent.
    fn take(
        bytes: usize,
        session: &Arc<AtomicUsize>,
        all: &Arc<AtomicUsize>,
    ) -> Result<Self, String> {
        let charge = Charge {
            bytes,
            session: session.clone(),
            all: all.clone(),
        };
        // Counted before the check, so two events racing cannot both slip under it.
        let mine = session.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let everyone = all.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if mine > MAX_SESSION_INFLIGHT_BYTES {
            return Err(format!(
                "this session has more than {} MiB of events waiting for the disk: recording cannot keep up",
                MAX_SESSION_INFLIGHT_BYTES >> 20
            ));
        }
        if everyone > MAX_INFLIGHT_BYTES {
            return Err(format!(
                "more than {} MiB of events wait for the disk: recording cannot keep up",
                MAX_INFLIGHT_BYTES >> 20
            ));
        }
        Ok(charge)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.session.fetch_sub(self.bytes, Ordering::Relaxed);
        self.all.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The daemon's recorder: one writer thread, shared by every session.
pub struct Recorder {
    /// `None` when `[recording] enabled = false`.
    queue: Option<writer::Queue>,
    dir: PathBuf,
    result_rows: usize,
    next: AtomicU64,
    inflight: Arc<AtomicUsize>,
    inflight_bytes: Arc<AtomicUsize>,
    active: writer::Active,
    limits: retention::Limits,
    /// Sessions the ledger has (see `retention::enforce`).
    listed: Arc<Mutex<HashSet<String>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The fleet sink's progress, for a shutdown to wait on.
    sink: Option<sink::SinkWatch>,
}

impl Recorder {
    /// Loads (or makes) the host key and starts the writer thread.
    pub fn start(settings: &RecordingSettings) -> Result<Arc<Recorder>, String> {
        if !settings.enabled {
            warn!("[recording] enabled = false: sessions are not recorded");
            return Ok(Arc::new(Recorder {
                queue: None,
                dir: settings.dir.clone(),
                result_rows: 0,
                next: AtomicU64::new(1),
                inflight: Arc::default(),
                inflight_bytes: Arc::default(),
                active: writer::Active::default(),
                limits: retention::Limits::default(),
                listed: Arc::default(),
                thread: Mutex::new(None),
                sink: None,
            }));
        }
        let key = keys::HostKey::load_or_create(&settings.keys_dir)?;
        std::fs::create_dir_all(&settings.dir)
            .map_err(|e| format!("cannot create {}: {e}", settings.dir.display()))?;
        let head = ledger::head_path(&settings.keys_dir, &settings.dir);
        let (mut ledger, known) = ledger::LedgerWriter::open(&settings.dir, &head, &key)?;
        recover::recover(&settings.dir, &key, &mut ledger, &known)?;
        // What the previous run left open, as recovery left it (sealed
        // now, or not), goes to the fleet database whole.
        // Sent again from their files, a batch at a time.
        let resend: Vec<String> = known
            .sessions
            .iter()
            .filter(|(_, outcome)| {
                matches!(outcome, ledger::Outcome::Opened | ledger::Outcome::Failed)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let listed = ledger.listed();
        let (queue, inbox) = writer::queue();
        let inflight = Arc::new(AtomicUsize::new(0));
        let active = writer::Active::default();
        let sink = settings
            .sink
            .clone()
            .map(|s| sink::Sink::new(s, &settings.dir, settings.sink_backlog, resend));
        let sink_watch = sink.as_ref().map(sink::Sink::watch);
        let thread = writer::spawn(inbox, key, inflight.clone(), active.clone(), sink, ledger)
            .map_err(|e| format!("cannot start the recording writer: {e}"))?;
        Ok(Arc::new(Recorder {
            queue: Some(queue),
            dir: settings.dir.clone(),
            result_rows: settings.result_rows,
            next: AtomicU64::new(1),
            inflight,
            inflight_bytes: Arc::default(),
            active,
            limits: settings.retention,
            listed,
            thread: Mutex::new(Some(thread)),
            sink: sink_watch,
        }))
    }

    /// One retention pass (blocking file I/O: run it off the reactor).
    pub fn enforce_retention(&self) -> std::io::Result<retention::Removed> {
        if self.limits.is_unlimited() {
            return Ok(retention::Removed::default());
        }
        let listed = self
            .listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Asked at each removal, not copied before: a session may open
        // while the pass walks the directory.
        let is_active = |path: &std::path::Path| {
            self.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(path)
        };
        let is_listed_now = |id: &str| {
            self.listed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(id)
        };
        // Blocks this (blocking) thread until the writer has the lines
        // fsynced: only then may the files go.
        let list_removed = |sessions: &[String]| {
            let Some(queue) = &self.queue else {
                return false;
            };
            let (ack, done) = oneshot::channel();
            queue
                .send_now(writer::Msg::Removed(sessions.to_vec(), ack))
                .is_ok()
                && done.blocking_recv().unwrap_or(false)
        };
        retention::enforce(
            &self.dir,
            self.limits,
            is_active,
            &listed,
            is_listed_now,
            list_removed,
            SystemTime::now(),
        )
    }

    /// Starts a session's recording with its first event. Never fails:
    /// a session that cannot be recorded comes back unhealthy.
    pub async fn open(&self, start: Body) -> SessionRecording {
        let (session, path) = files::new_session(&self.dir);
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let health = Arc::new(Health::default());
        let recording = SessionRecording {
            session,
            handle,
            started: Instant::now(),
            queue: self.queue.clone(),
            inflight: self.inflight.clone(),
            inflight_bytes: self.inflight_bytes.clone(),
            pending_bytes: Arc::default(),
            health: health.clone(),
            result_rows: self.result_rows,
        };
        let Some(queue) = &self.queue else {
            return recording;
        };
        let (ack, done) = oneshot::channel();
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let sent = queue.send_now(writer::Msg::Open {
            handle,
            path,
            session: recording.session.clone(),
            start,
            health: health.clone(),
            ack,
        });
        if sent.is_err() || done.await.is_err() {
            health.fail("the recording writer has stopped".into());
        }
        recording
    }

    /// Returns once everything handed over so far is written and fsynced.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if let Some(queue) = &self.queue
            && queue.send_now(writer::Msg::Flush(ack)).is_ok()
        {
            let _ = done.await;
        }
    }

    /// Flushes, then lets the writer thread go (daemon shutdown).
    pub async fn shutdown(&self) {
        self.flush().await;
        // The writer's thread is not joined: the last rows handed to the
        // fleet sink (the seals of the sessions just closed) would go with
        // the process (found in review). Waited for, within bounds.
        if let Some(watch) = &self.sink {
            watch.settle().await;
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(thread);
    }
}

/// Whether a session is still being recorded.
#[derive(Default)]
pub(crate) struct Health {
    failed: AtomicBool,
    error: OnceLock<String>,
}

impl Health {
    fn fail(&self, why: String) {
        if self.error.set(why.clone()).is_ok() {
            error!(error = %why, "session recording failed: the session is refused from now on");
            crate::admin::metrics::recording_failure();
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// One session's handle on its recording.
pub struct SessionRecording {
    session: String,
    handle: u64,
    started: Instant,
    /// `None`: recording is off, events go nowhere.
    queue: Option<writer::Queue>,
    inflight: Arc<AtomicUsize>,
    /// Bytes of all sessions' events waiting for the writer.
    inflight_bytes: Arc<AtomicUsize>,
    /// Bytes of this session's events waiting for the writer.
    pending_bytes: Arc<AtomicUsize>,
    health: Arc<Health>,
    result_rows: usize,
}

impl SessionRecording {
    /// The session id (the recording's file name without `.jsonl`).
    pub fn id(&self) -> &str {
        &self.session
    }

    /// `Err` with the reason once an event could not be written: the
    /// caller must not forward another command.
    pub fn healthy(&self) -> Result<(), String> {
        if !self.health.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(self
            .health
            .error
            .get()
            .cloned()
            .unwrap_or_else(|| "recording failed".into()))
    }

    /// Whether events go anywhere: a session skips building the ones that
    /// would be dropped.
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// How many result rows to keep per statement.
    pub fn result_rows(&self) -> usize {
        self.result_rows
    }

    /// Hands an event to the writer; returns at once.
    pub fn record(&self, body: Body) {
        // Every approval step passes here, recorded or not (recording off).
        if let Body::Approval { event, .. } = &body {
            crate::admin::metrics::approval(event);
        }
        let bytes = body.weight();
        self.send(bytes, |handle, wall, mono_us, _charge| writer::Msg::Event {
            handle,
            wall,
            mono_us,
            body,
            _charge,
        });
    }

    /// Records the session end and seals the recording.
    pub fn close(self, end: Body) {
        let bytes = end.weight();
        self.send(bytes, |handle, wall, mono_us, _charge| writer::Msg::Close {
            handle,
            wall,
            mono_us,
            end,
            _charge,
        });
    }

    fn send(&self, bytes: usize, msg: impl FnOnce(u64, SystemTime, u64, Charge) -> writer::Msg) {
        let Some(queue) = &self.queue else {
            return;
        };
        let charge = match Charge::take(bytes, &self.pending_bytes, &self.inflight_bytes) {
            Ok(charge) => charge,
            Err(why) => return self.health.fail(why),
        };
        if self.inflight.fetch_add(1, Ordering::Relaxed) >= MAX_INFLIGHT {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            self.health.fail(format!(
                "more than {MAX_INFLIGHT} events wait for the disk: recording cannot keep up"
            ));
            return;
        }
        let mono_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if queue
            .send_later(msg(self.handle, SystemTime::now(), mono_us, charge))
            .is_err()
        {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            self.health.fail("the recording writer has stopped".into());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod verify_tests;
