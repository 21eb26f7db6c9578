//! The writer thread: takes events from every session, chains and
//! serialises them, appends each session's batch with one write, and
//! fsyncs dirty files at most every 100 ms (a closed session's file at the
//! next such group commit). Blocking file I/O lives here, on its own
//! thread, never on the gateway's reactor.
//!
//! Sessions hand over events through a [`Queue`] that does not wake the
//! writer per event: waking another thread costs the statement's path a
//! syscall and, on a small runner, a core the client or server needed.
//! The first event after the writer last looked nudges it; it then waits
//! [`GATHER`] and takes everything queued meanwhile in one go. Only what a
//! caller waits for (a session opening, a flush) is taken at once.
use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, oneshot};
use tracing::error;

use super::{
    Health, chain,
    event::{Body, Event},
    keys::HostKey,
    ledger::{Anchor, LedgerWriter, Outcome},
    sink::{Row, Sink, SinkQueue},
};

const SYNC_EVERY: Duration = Duration::from_millis(100);
const BATCH: usize = 512;
/// A session's encoding buffer is kept up to this size; one huge event
/// (a long statement, a wide sample) does not pin its memory.
const SCRATCH_KEEP: usize = 64 * 1024;
/// How long the writer lets events gather after a nudge. Each wake-up of
/// the writer costs a context switch, and on a small VM waking an idle
/// vCPU costs more than the batch it writes: at 5 ms, recording took a
/// fifth of the gateway's throughput at 8 pgbench clients, at 25 ms about
/// a tenth (BENCHMARKS.md). The price: a process crash loses up to this
/// much of the newest events (a power loss, this plus [`SYNC_EVERY`]), and
/// a write failure is noticed this much later.
const GATHER: Duration = Duration::from_millis(25);

/// The sessions' side of the writer's inbox.
#[derive(Clone)]
pub(super) struct Queue {
    /// Messages a caller waits for, and nudges; the writer always listens.
    urgent: mpsc::UnboundedSender<Msg>,
    /// Events and closes; the writer never waits on this channel, so a
    /// send never wakes it.
    bulk: mpsc::UnboundedSender<Msg>,
    /// Set by the first bulk send after the writer last emptied `bulk`.
    armed: Arc<AtomicBool>,
}

/// The writer's side.
pub(super) struct Inbox {
    urgent: mpsc::UnboundedReceiver<Msg>,
    bulk: mpsc::UnboundedReceiver<Msg>,
    armed: Arc<AtomicBool>,
}

pub(super) fn queue() -> (Queue, Inbox) {
    let (urgent, urgent_rx) = mpsc::unbounded_channel();
    let (bulk, bulk_rx) = mpsc::unbounded_channel();
    let armed = Arc::new(AtomicBool::new(false));
    (
        Queue {
            urgent,
            bulk,
            armed: armed.clone(),
        },
        Inbox {
            urgent: urgent_rx,
            bulk: bulk_rx,
            armed,
        },
    )
}

impl Queue {
    /// For messages whose sender waits for the answer.
    pub(super) fn send_now(&self, msg: Msg) -> Result<(), ()> {
        self.urgent.send(msg).map_err(|_| ())
    }

    /// For events: written within [`GATHER`], without waking the writer
    /// unless it is idle.
    pub(super) fn send_later(&self, msg: Msg) -> Result<(), ()> {
        self.bulk.send(msg).map_err(|_| ())?;
        // AcqRel pairs with the writer's swap: if this sees `true`, the
        // writer's next swap sees this send, and takes the event with it.
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.urgent.send(Msg::Nudge).map_err(|_| ())?;
        }
        Ok(())
    }
}

pub(super) enum Msg {
    Open {
        handle: u64,
        path: PathBuf,
        session: String,
        start: Body,
        health: Arc<Health>,
        ack: oneshot::Sender<()>,
    },
    Event {
        handle: u64,
        wall: SystemTime,
        mono_us: u64,
        body: Body,
        /// Given back when the writer is done with the event.
        _charge: super::Charge,
    },
    Close {
        handle: u64,
        wall: SystemTime,
        mono_us: u64,
        end: Body,
        _charge: super::Charge,
    },
    /// Retention is about to remove these recordings: the ledger says
    /// so, fsynced, and answers whether it did.
    Removed(Vec<String>, oneshot::Sender<bool>),
    /// Write and fsync everything, then answer.
    Flush(oneshot::Sender<()>),
    /// Events wait in the bulk channel.
    Nudge,
}

struct Open {
    file: File,
    path: PathBuf,
    session: String,
    seq: u64,
    prev: String,
    pending: Vec<u8>,
    /// The event being encoded; kept between events up to [`SCRATCH_KEEP`].
    scratch: Vec<u8>,
    /// Bytes written so far, all whole lines.
    len: u64,
    /// Past [`MAX_SESSION_RECORDING`]: the session was failed.
    full: bool,
    dirty: bool,
    closed: bool,
    /// Set at close until the seal is written: `(events, final hash)`
    /// for the ledger.
    sealed: Option<(u64, String)>,
    /// The event count and last hash of what was written (`len`).
    written: Anchor,
    /// The same at the last fsync: what the head holds the recording to.
    synced: Option<Anchor>,
    health: Arc<Health>,
}

/// Files being written; retention leaves them alone.
pub(super) type Active = Arc<Mutex<HashSet<PathBuf>>>;

pub(super) fn spawn(
    inbox: Inbox,
    key: HostKey,
    inflight: Arc<AtomicUsize>,
    active: Active,
    sink: Option<Sink>,
    ledger: LedgerWriter,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cp-recorder".into())
        .spawn(move || {
            yield_to_sessions();
            // I/O too: the fleet sink's PostgreSQL connection runs here.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "the recording writer cannot start; every session will be refused");
                    return;
                }
            };
            runtime.block_on(async move {
                let sink = sink.map(|sink| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    (sink.queue(tx), tokio::spawn(sink.run(rx)))
                });
                let (tx, task) = sink.unzip();
                Writer::new(key, inflight, active, tx, ledger).run(inbox).await;
                // The writer is gone, so is the sender: the sink drains.
                if let Some(task) = task {
                    let _ = task.await;
                }
            });
        })
}

struct Writer {
    key: HostKey,
    inflight: Arc<AtomicUsize>,
    active: Active,
    files: HashMap<u64, Open>,
    /// Rows for the fleet sink, sent after each batch is on disk.
    sink: Option<SinkQueue>,
    rows: Vec<Row>,
    ledger: LedgerWriter,
    /// Folders that got a new recording since the last sync: fsynced
    /// before the ledger, so a power loss cannot keep a ledger line for a
    /// file whose directory entry was lost.
    new_dirs: HashSet<PathBuf>,
}

impl Writer {
    fn new(
        key: HostKey,
        inflight: Arc<AtomicUsize>,
        active: Active,
        sink: Option<SinkQueue>,
        ledger: LedgerWriter,
    ) -> Self {
        Self {
            key,
            inflight,
            active,
            files: HashMap::new(),
            sink,
            rows: Vec::new(),
            ledger,
            new_dirs: HashSet::new(),
        }
    }

    /// Puts an ended recording into the host's ledger. The session is
    /// over and its recording complete, so a failure here is logged, not
    /// held against it; `verify` then finds the recording sealed but not
    /// listed.
    /// A session listed as opened whose file could not be made: nothing
    /// of it exists, which a `removed` line says (an `opened` one alone
    /// would have `verify --all` call the missing file deleted).
    fn unlist(&mut self, session: &str) {
        let _ = self.list(Outcome::Removed, session, 0, "");
    }

    fn list(
        &mut self,
        outcome: Outcome,
        session: &str,
        events: u64,
        final_hash: &str,
    ) -> Result<(), String> {
        let listed = self
            .ledger
            .append(&self.key, outcome, session, events, final_hash);
        if let Err(e) = &listed {
            error!(error = %e, session, "cannot add a recording to the ledger");
        }
        listed
    }

    fn send_rows(&mut self) {
        if let Some(queue) = &self.sink {
            queue.send(std::mem::take(&mut self.rows));
        }
    }

    fn set_active(&self, path: &std::path::Path, active: bool) {
        let mut set = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active {
            set.insert(path.to_path_buf());
        } else {
            set.remove(path);
        }
    }

    async fn run(mut self, mut inbox: Inbox) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gather: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                n = inbox.urgent.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    // Whatever a session queued before sending these (the
                    // events a flush must cover) is in `bulk` already.
                    self.take_bulk(&mut inbox.bulk);
                    let mut flushes = Vec::new();
                    for msg in batch.drain(..) {
                        match msg {
                            Msg::Flush(ack) => flushes.push(ack),
                            Msg::Nudge => {
                                gather.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
                            }
                            other => self.apply(other),
                        }
                    }
                    self.write_pending();
                    self.send_rows();
                    if !flushes.is_empty() {
                        self.sync();
                        for ack in flushes {
                            let _ = ack.send(());
                        }
                    }
                }
                _ = sleep_until(gather), if gather.is_some() => {
                    gather = None;
                    // Disarm first: a send after this nudges again, a send
                    // before it is visible to the drain below.
                    inbox.armed.swap(false, Ordering::AcqRel);
                    self.take_bulk(&mut inbox.bulk);
                    self.write_pending();
                    self.send_rows();
                }
                _ = tick.tick() => self.sync(),
            }
        }
        self.take_bulk(&mut inbox.bulk);
        self.write_pending();
        self.sync();
        self.send_rows();
    }

    fn take_bulk(&mut self, bulk: &mut mpsc::UnboundedReceiver<Msg>) {
        while let Ok(msg) = bulk.try_recv() {
            self.apply(msg);
        }
    }

    fn apply(&mut self, msg: Msg) {
        if matches!(
            msg,
            Msg::Open { .. } | Msg::Event { .. } | Msg::Close { .. }
        ) {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        match msg {
            Msg::Open {
                handle,
                path,
                session,
                start,
                health,
                ack,
            } => {
                // Active before it exists: retention walking the folder
                // meanwhile must not take it for a stray file.
                self.set_active(&path, true);
                // Listed before the file exists, so whoever sees the file
                // finds it in the ledger (`verify` holds a recording a
                // sound ledger never listed to be planted). Only what the
                // ledger saw opened is sealed by the next start if this
                // run dies: a session it cannot list is refused.
                if let Err(e) = self.list(Outcome::Opened, &session, 0, "") {
                    self.set_active(&path, false);
                    health.fail(e);
                    let _ = ack.send(());
                    return;
                }
                let result = create(&path).map(|file| Open {
                    file,
                    path: path.clone(),
                    session: session.clone(),
                    seq: 0,
                    prev: chain::GENESIS.to_owned(),
                    pending: Vec::new(),
                    scratch: Vec::new(),
                    len: 0,
                    full: false,
                    dirty: false,
                    closed: false,
                    sealed: None,
                    written: Anchor {
                        events: 0,
                        hash: chain::GENESIS.to_owned(),
                    },
                    synced: None,
                    health: health.clone(),
                });
                match result {
                    Ok(mut open) => {
                        let rows = self.sink.is_some().then_some(&mut self.rows);
                        open.push(SystemTime::now(), 0, start, rows);
                        // Written now, so the session learns before its
                        // first command whether it can be recorded at all.
                        if let Err(e) = open.flush() {
                            // Nothing of it is recorded: an empty or torn
                            // file would only read as tampered later.
                            let _ = fs::remove_file(&path);
                            self.unlist(&open.session);
                            self.set_active(&path, false);
                            health.fail(format!("cannot write {}: {e}", path.display()));
                        } else {
                            // Day, month, year and the root: any of them
                            // may have been made just now.
                            self.new_dirs
                                .extend(path.ancestors().skip(1).take(4).map(PathBuf::from));
                            self.files.insert(handle, open);
                        }
                    }
                    Err(e) => {
                        self.unlist(&session);
                        self.set_active(&path, false);
                        health.fail(format!("cannot create {}: {e}", path.display()));
                    }
                }
                let _ = ack.send(());
            }
            Msg::Event {
                handle,
                wall,
                mono_us,
                body,
                ..
            } => {
                let rows = self.sink.is_some().then_some(&mut self.rows);
                if let Some(open) = self.files.get_mut(&handle) {
                    open.push(wall, mono_us, body, rows);
                }
            }
            Msg::Close {
                handle,
                wall,
                mono_us,
                end,
                ..
            } => {
                let mut rows = self.sink.is_some().then_some(&mut self.rows);
                if let Some(open) = self.files.get_mut(&handle) {
                    open.push(wall, mono_us, end, rows.as_deref_mut());
                    let final_hash = open.prev.clone();
                    let seal = Body::Seal {
                        signature: self.key.sign(&open.session, &final_hash),
                        public_key: self.key.public_hex(),
                        final_hash: final_hash.clone(),
                        recovered: None,
                    };
                    open.push(wall, mono_us, seal, rows);
                    open.closed = true;
                    open.sealed = Some((open.seq, final_hash));
                }
            }
            Msg::Removed(sessions, ack) => {
                let mut listed = true;
                for session in sessions {
                    listed &= self.list(Outcome::Removed, &session, 0, "").is_ok();
                }
                let synced = match self.ledger.sync() {
                    Ok(()) => true,
                    Err(e) => {
                        error!(error = %e, "cannot fsync the ledger");
                        false
                    }
                };
                let _ = ack.send(listed && synced);
            }
            Msg::Flush(ack) => {
                let _ = ack.send(());
            }
            Msg::Nudge => {}
        }
    }

    fn write_pending(&mut self) {
        let mut failed = Vec::new();
        for (handle, open) in &mut self.files {
            if let Err(e) = open.flush() {
                failed.push((
                    *handle,
                    format!("cannot write {}: {e}", open.path.display()),
                ));
            }
        }
        for (handle, why) in failed {
            if let Some(open) = self.files.remove(&handle) {
                self.give_up(open, why, true);
            }
        }
    }

    /// A recording that cannot be written any more: its session is
    /// refused from now on, and where the recording stood when last on
    /// disk stays in the head and goes into the ledger (`failed`). Found
    /// in review: dropped with its session, that anchor left the head, and
    /// the next start sealed whatever chain the file then held, so a
    /// recording rewritten while the disk was full came out signed.
    ///
    /// `fsync` says whether to try an fsync first: after one failed, a
    /// second may succeed without the data being on disk.
    fn give_up(&mut self, mut open: Open, why: String, fsync: bool) {
        open.health.fail(why);
        // What was written is whole lines (a failed write is cut back):
        // once on disk, that is where the recording ends.
        if fsync && open.file.sync_data().is_ok() {
            open.synced = Some(open.written.clone());
        }
        // Nothing fsynced at all: what was written is still what the
        // gateway vouches for, not whatever the file holds later.
        let anchor = open.synced.take().unwrap_or(open.written);
        self.ledger.keep_anchor(&open.session, anchor.clone());
        let _ = self.list(Outcome::Failed, &open.session, anchor.events, &anchor.hash);
        self.set_active(&open.path, false);
    }

    /// Fsyncs what was written, then lists the recordings sealed since
    /// the last sync in the ledger and fsyncs it: after a power loss the
    /// ledger never names a seal that is not on disk.
    fn sync(&mut self) {
        for dir in self.new_dirs.drain() {
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                error!(dir = %dir.display(), error = %e, "cannot fsync a recordings folder");
            }
        }
        // Opened lines first: a recording on disk is always one the
        // ledger saw opened, so the next start may seal it.
        if let Err(e) = self.ledger.sync() {
            error!(error = %e, "cannot fsync the ledger");
        }
        let mut failed = Vec::new();
        for (handle, open) in &mut self.files {
            if open.dirty {
                if let Err(e) = open.file.sync_data() {
                    failed.push((
                        *handle,
                        format!("cannot fsync {}: {e}", open.path.display()),
                    ));
                    continue;
                }
                open.dirty = false;
                open.synced = Some(open.written.clone());
            } else if open.synced.is_none() {
                // Nothing written since it opened (or since the last
                // sync, which set it already).
                open.synced = Some(open.written.clone());
            }
        }
        for (handle, why) in failed {
            if let Some(open) = self.files.remove(&handle) {
                self.give_up(open, why, false);
            }
        }
        let mut done = Vec::new();
        let mut ended = Vec::new();
        self.files.retain(|_, open| {
            if open.closed {
                done.push(open.path.clone());
                if let Some((events, final_hash)) = open.sealed.take() {
                    ended.push((open.session.clone(), events, final_hash));
                }
            }
            !open.closed
        });
        // Listed before retention may treat them as settled files.
        for (session, events, final_hash) in ended {
            let _ = self.list(Outcome::Sealed, &session, events, &final_hash);
        }
        for path in done {
            self.set_active(&path, false);
        }
        // Where each open recording stands now that it is on disk: the
        // next start seals only a recording that still runs through it.
        let anchors = self
            .files
            .values()
            .filter(|open| !open.closed)
            .filter_map(|open| Some((open.session.clone(), open.synced.clone()?)))
            .collect();
        self.ledger.set_anchors(anchors);
        if let Err(e) = self.ledger.sync() {
            error!(error = %e, "cannot fsync the ledger");
        }
        // Here, after everything above is on disk, so the compacted
        // ledger names nothing a power loss could take back.
        if let Err(e) = self.ledger.compact_if_due(&self.key) {
            error!(error = %e, "cannot compact the ledger; it stays as it is and keeps growing");
        }
    }
}

impl Open {
    fn push(&mut self, wall: SystemTime, mono_us: u64, body: Body, rows: Option<&mut Vec<Row>>) {
        let kind = body.kind();
        let event = Event {
            seq: self.seq,
            session: self.session.clone(),
            wall: humantime::format_rfc3339_micros(wall).to_string(),
            mono_us,
            body,
        };
        // Serialising plain data (strings, numbers, options) cannot fail;
        // if it ever did, the session must not go on unrecorded.
        // Into a buffer kept per recording: an event of a wide result is
        // kilobytes, which a fresh Vec would reach by repeated doubling.
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        if let Err(e) = serde_json::to_writer(&mut bytes, &event) {
            self.health.fail(format!("cannot encode an event: {e}"));
            self.scratch = bytes;
            return;
        }
        let hash = chain::append_line(&mut self.pending, &self.prev, &bytes);
        if let Some(rows) = rows {
            rows.push(Row {
                session: self.session.clone(),
                seq: i64::try_from(self.seq).unwrap_or(i64::MAX),
                wall: event.wall.clone(),
                kind,
                prev_hash: self.prev.clone(),
                hash: hash.clone(),
                // serde_json writes UTF-8.
                raw: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        if bytes.capacity() <= SCRATCH_KEEP {
            self.scratch = bytes;
        }
        self.prev = hash;
        self.seq += 1;
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        let written = if super::tests::disk_full_for(&self.session) {
            Err(std::io::ErrorKind::StorageFull.into())
        } else {
            self.file.write_all(&self.pending)
        };
        #[cfg(not(test))]
        let written = self.file.write_all(&self.pending);
        if let Err(e) = written {
            // A full disk mid-write: cut back to the last whole line, so
            // the recording reads as the unsealed chain it is.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.pending.len() as u64;
        self.pending.clear();
        self.dirty = true;
        if self.len >= max_recording(&self.session) && !self.full {
            // Its later statements are refused and not recorded; what is in
            // flight (at most the session's 64 MiB of events, however JSON
            // writes them) and its end and seal still fit under the
            // size `sessions verify` reads whole.
            self.full = true;
            self.health.fail(format!(
                "the recording reached {} MiB, the most chokepoint keeps for one session (a recording is verified whole, up to {} MiB): open a new connection",
                max_recording(&self.session) >> 20,
                super::files::MAX_RECORDING_BYTES >> 20
            ));
        }
        self.written = Anchor {
            events: self.seq,
            hash: self.prev.clone(),
        };
        Ok(())
    }
}

/// The most one session's recording grows before its session is failed
/// (statements refused): a recording is verified whole, up to
/// [`super::files::MAX_RECORDING_BYTES`], and this leaves room for the
/// events still in flight when it is reached.
const MAX_SESSION_RECORDING: u64 = 512 << 20;

fn max_recording(session: &str) -> u64 {
    #[cfg(test)]
    if let Some(cap) = super::tests::recording_cap_for(session) {
        return cap;
    }
    let _ = session;
    MAX_SESSION_RECORDING
}

/// Makes this thread yield to the sessions: `SCHED_BATCH` (its wake-ups
/// never preempt a running session) at nice 5 (about a third of a normal
/// thread's share when a core is contended). The writer works in bursts
/// every few milliseconds; at normal weight a burst delays the statements
/// in flight on a small runner (p99 at 1 client doubled), while falling
/// behind by a few milliseconds costs nothing. It still gets its share, so
/// a busy host cannot starve it into refusing sessions.
fn yield_to_sessions() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscalls on this thread's own id (0: the calling thread).
    let (batch, nice) = unsafe {
        let tid = libc::gettid();
        (
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param),
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 5),
        )
    };
    if batch != 0 || nice != 0 {
        // Only a scheduling preference: keep going at normal weight.
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the recording writer's priority");
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn create(path: &std::path::Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}
