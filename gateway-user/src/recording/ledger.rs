//! The host's ledger of sessions: `<dir>/ledger.jsonl`, one signed,
//! hash-chained line each time a recording is opened, sealed, sealed
//! after a crash (recovered), given up on by the writer (failed), found
//! at start no longer holding what was fsynced (damaged) or removed by
//! retention.
//!
//! A recording's own seal proves what it holds, but not that it was ever
//! sealed: cut the file short and drop the seal, and it reads like a
//! session the gateway never finished. The ledger remembers every seal
//! somewhere else, so `verify` tells a cut-short recording ("the ledger
//! has it sealed after 9 events") from a crash, and `verify --all` finds
//! recordings deleted outright. Each line is signed with the host key
//! over its content and the line before it, so a line can be neither
//! changed nor removed from the middle; the ledger's last line (its
//! [`Head`]) is also kept in the keys directory, outside the recordings
//! directory, so the ledger cannot be cut short or replaced either. What
//! stays open: lines written in the last ~100 ms before a cut (the head
//! moves at each fsync), and everything, to whoever holds the key.
//!
//! Lines use the recordings' chain format ([`super::chain`]):
//!
//! ```text
//! {"hash":H,"prev_hash":P,"event":{"seq":3,"wall":"…","type":"sealed","session":"20261127T…","events":9,"final_hash":"…","public_key":"…","signature":"…"}}
//! ```
//!
//! Retention's `removed` lines would let it grow without end, so it is
//! compacted ([`LedgerWriter::compact`]) when most of its lines say
//! nothing any more.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{chain, keys, keys::HostKey};

/// The ledger's file name in the recordings directory.
pub const FILE: &str = "ledger.jsonl";

/// Where a compaction writes the new ledger before it takes the old one's
/// place; one found at start is a compaction cut short, and is removed.
const COMPACTING: &str = "ledger.jsonl.compacting";

/// The largest ledger read: well over a million recordings' lines (one
/// each once compacted), and a bound on what a sparse, huge file put in
/// its place makes the daemon or `verify` allocate.
pub const MAX_BYTES: u64 = 1 << 30;

/// The largest head read: it holds an anchor per open recording.
const MAX_HEAD_BYTES: u64 = 64 << 20;

/// Lines below which a ledger is never compacted: a few megabytes, read
/// in well under a second at start.
pub const COMPACT_MIN_LINES: u64 = 20_000;

/// What became of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its session started: the recovery pass seals only recordings the
    /// ledger saw opened, never a file that merely appeared.
    Opened,
    /// Sealed at its session's end.
    Sealed,
    /// Sealed at the gateway's next start: it stopped mid-session.
    Recovered,
    /// Removed by retention.
    Removed,
    /// The gateway could not write it any more (a full disk, a failed
    /// fsync) and stopped, its session refused: `events` and `final_hash`
    /// are where it stood when last on disk. The next start seals it only
    /// if it still runs through that event.
    Failed,
    /// At the gateway's start the recording no longer held what the
    /// gateway had fsynced of it (cut, rewritten, another session's
    /// lines), so it was left unsealed: `events` and `final_hash` are
    /// what it should have held (0 and empty when nothing was kept). A
    /// line of its own, so the verdict outlives the head's anchor and a
    /// compaction.
    Damaged,
    /// Not a recording's: the first line of a compacted ledger, which
    /// continues the chain of the lines it replaced (its `prev_hash` is
    /// the last of them) and is followed by one line per recording they
    /// still listed. `events` counts those lines.
    Compacted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Opened => "opened",
            Outcome::Sealed => "sealed",
            Outcome::Recovered => "recovered",
            Outcome::Removed => "removed",
            Outcome::Failed => "failed",
            Outcome::Damaged => "damaged",
            Outcome::Compacted => "compacted",
        }
    }
}

/// One ledger line's event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub wall: String,
    #[serde(rename = "type")]
    pub outcome: Outcome,
    pub session: String,
    /// Events in the recording, seal included (0 for a removal).
    pub events: u64,
    /// The hash the seal signs (empty for a removal).
    pub final_hash: String,
    pub public_key: String,
    pub signature: String,
}

impl Entry {
    /// Where a recording the gateway gave up on (failed) or found
    /// damaged had to run through, when the line says.
    pub fn anchor(&self) -> Option<Anchor> {
        match self.outcome {
            Outcome::Failed | Outcome::Damaged if self.events > 0 => Some(Anchor {
                events: self.events,
                hash: self.final_hash.clone(),
            }),
            _ => None,
        }
    }

    /// A seal's final hash (and a failure's last fsynced one) is printed
    /// and compared as a chain hash; an opening or removal has none.
    fn check_final_hash(&self) -> Result<(), String> {
        let ok = match self.outcome {
            Outcome::Sealed | Outcome::Recovered | Outcome::Failed => {
                chain::is_hash(&self.final_hash)
            }
            // With no anchor kept, there is nothing it should have held.
            Outcome::Damaged if self.events == 0 => self.final_hash.is_empty(),
            Outcome::Damaged => chain::is_hash(&self.final_hash),
            Outcome::Opened | Outcome::Removed | Outcome::Compacted => self.final_hash.is_empty(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "final_hash {:?} of this {} entry is not {}",
                self.final_hash,
                self.outcome.as_str(),
                match self.outcome {
                    Outcome::Sealed | Outcome::Recovered | Outcome::Failed => {
                        "64 lowercase hex digits"
                    }
                    Outcome::Damaged if self.events > 0 => "64 lowercase hex digits",
                    Outcome::Opened | Outcome::Removed | Outcome::Compacted | Outcome::Damaged => {
                        "empty"
                    }
                }
            ))
        }
    }
}

/// What a ledger line's signature covers: its place (the line before it
/// and its seq) and everything it says.
fn message(prev_hash: &str, e: &Entry) -> Vec<u8> {
    format!(
        "chokepoint-ledger-v1\n{prev_hash}\n{}\n{}\n{}\n{}\n{}",
        e.seq,
        e.outcome.as_str(),
        e.session,
        e.events,
        e.final_hash
    )
    .into_bytes()
}

/// Whether a ledger file of `lines` lines that lists `listed` recordings
/// is worth compacting: it drops to `listed + 1` lines, and amortised over
/// the lines written since the last compaction, that costs each line O(1).
fn compaction_due(lines: u64, listed: u64) -> bool {
    lines > COMPACT_MIN_LINES.max(listed.saturating_mul(3))
}

/// Whether a ledger's first line, which does not start at the genesis
/// hash, begins a compacted ledger: a restated line (unsigned) or the
/// compaction line itself (nothing was left to restate). Any other line
/// there means the lines before it were removed.
fn starts_compaction(event: &[u8]) -> bool {
    serde_json::from_slice::<Entry>(event)
        .is_ok_and(|e| e.signature.is_empty() || e.outcome == Outcome::Compacted)
}

/// The ledger's last line as the daemon last wrote it, kept outside the
/// recordings directory: in the keys directory, which only root can write
/// and which holds the signing key anyway. A ledger that no longer reaches
/// its head was cut or replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// `seq` of the last line.
    pub seq: u64,
    /// Its `hash`.
    pub hash: String,
    /// Each open recording as last fsynced: its event count and the hash
    /// of its last event. A recording the next start seals must still
    /// run through that event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub open: BTreeMap<String, Anchor>,
}

/// An open recording's event count and last hash at an fsync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub events: u64,
    pub hash: String,
}

/// Where the head of the ledger in recordings directory `dir` is kept:
/// one file per directory in `keys_dir`.
pub fn head_path(keys_dir: &Path, dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    // However the directory is spelled (relative, trailing slash, a
    // symlink), one head.
    let dir = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf());
    let digest = Sha256::digest(dir.as_os_str().as_bytes());
    keys_dir.join(format!("ledger-{}.head", &hex::encode(digest)[..16]))
}

/// Reads a head file; `None` when there is none yet.
pub fn read_head(path: &Path) -> Result<Option<Head>, String> {
    match crate::regular_file::read_bounded(path, MAX_HEAD_BYTES) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| format!("{} is not a ledger head: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_head(path: &Path, head: &Head) -> std::io::Result<()> {
    let tmp = path.with_extension("head.new");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(head).map_err(std::io::Error::other)?)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// What the ledger held when the daemon opened it.
#[derive(Debug, Default)]
pub struct Known {
    /// The newest outcome of every session it names.
    pub sessions: HashMap<String, Outcome>,
    /// The recordings that were open at the last fsync, as then.
    pub anchors: BTreeMap<String, Anchor>,
    /// Whether it was started just now: recordings from before it exist
    /// that it never saw opened.
    pub fresh: bool,
}

/// The daemon's open ledger: locked for its lifetime, so two daemons
/// never interleave one chain.
pub struct LedgerWriter {
    file: Flock<File>,
    path: PathBuf,
    head_path: PathBuf,
    prev: String,
    seq: u64,
    /// The file's length after its last whole line: a write that fails
    /// halfway is cut back to it, so no later line chains onto garbage.
    len: u64,
    /// Set when a torn line could not be cut off.
    broken: Option<String>,
    /// The seq of the file's first line (not 0 once compacted).
    first_seq: u64,
    /// After a failed compaction (disk full), the seq before which it is
    /// not tried again: not at every 100 ms sync.
    retry_compaction_at: u64,
    dirty: bool,
    anchors: BTreeMap<String, Anchor>,
    /// Sessions it has as opened, sealed or recovered (not removed): what
    /// retention ages by id and lists as removed.
    listed: Arc<Mutex<HashSet<String>>>,
    /// Anchors from the head the ledger was opened with, of recordings
    /// the recovery pass has not settled: kept in every later head, so a
    /// recording left alone once is still held to its anchor next time.
    carried: BTreeMap<String, Anchor>,
    anchors_changed: bool,
}

impl LedgerWriter {
    /// Opens (or starts) the ledger in `dir` and checks it against its
    /// head in `head_path`: a ledger cut short or replaced, or a line the
    /// head does not cover that `key` did not sign, stops the recorder.
    pub fn open(
        dir: &Path,
        head_path: &Path,
        key: &HostKey,
    ) -> Result<(LedgerWriter, Known), String> {
        let path = dir.join(FILE);
        let head = read_head(head_path)?;
        match std::fs::remove_file(dir.join(COMPACTING)) {
            Ok(()) => {
                tracing::warn!(ledger = %path.display(), "a compaction of the ledger was cut short: the ledger stays as it was");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove {}: {e}",
                    dir.join(COMPACTING).display()
                ));
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|file| crate::regular_file::check(&file).map(|()| file))
            .map_err(|e| format!("cannot open the ledger {}: {e}", path.display()))?;
        let mut file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!(
                "the ledger {} is locked ({e}): another chokepoint daemon records into {}; give each instance its own [recording] dir",
                path.display(),
                dir.display()
            )
        })?;
        let size = file
            .metadata()
            .map_err(|e| format!("cannot read the ledger {}: {e}", path.display()))?
            .len();
        if size > MAX_BYTES {
            return Err(format!(
                "the ledger {} is {size} bytes, larger than the {MAX_BYTES} a ledger may be (was it made sparse?); check it with `chokepoint sessions verify --all`, then move it aside (and remove {}) to start a new one",
                path.display(),
                head_path.display()
            ));
        }
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| (&mut *file).take(MAX_BYTES + 1).read_to_end(&mut data))
            .map_err(|e| format!("cannot read the ledger {}: {e}", path.display()))?;
        // A crash (power loss) can leave the last line half written: it
        // was never fsynced, so the head does not name it, and whatever it
        // listed the recovery pass at start lists again.
        // Cut only once the rest checks out: found in review, a torn tail
        // cut off first could take the head's own line with it.
        let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn = data.len() - whole;
        data.truncate(whole);
        let trusted = [key.public_hex()];
        // Lines up to the head are covered by its hash through the chain;
        // only the ones after it (written, not yet named by a head) need
        // their signatures checked.
        let signed_from = head.as_ref().map_or(0, |h| h.seq.saturating_add(1));
        let mut checked = Ledger::check(&data, &trusted, head.as_ref(), signed_from);
        // Lines past the head were never confirmed by an fsync: a power
        // loss may have torn them, and anything appended there is not the
        // daemon's. Cut back to the last good one rather than stop.
        // Never below the end of the head's line, though: found in review,
        // a ledger replaced by one unsigned line that claimed to continue
        // from the head read as a compaction cut short, and was cut to
        // nothing with a warning.
        if let Some(p) = &checked.problem
            && head.is_some()
            && p.seq >= signed_from
            && checked.lines >= signed_from
        {
            if checked.head_end.is_none() {
                return Err(format!(
                    "the ledger {} does not hold the line its head {} names (seq {}) before its first bad line {} (seq {}): {}; it was replaced. Check it with `chokepoint sessions verify --all`, then move it aside (and remove the head) to start a new one",
                    path.display(),
                    head_path.display(),
                    signed_from - 1,
                    p.line,
                    p.seq,
                    p.reason
                ));
            }
            tracing::warn!(ledger = %path.display(), line = p.line, reason = %p.reason, "the ledger's lines past its head (never confirmed by an fsync) do not check out: cutting them off");
            file.set_len(checked.valid_len as u64)
                .map_err(|e| format!("cannot repair the ledger {}: {e}", path.display()))?;
            checked.problem = None;
        } else if torn > 0 && checked.problem.is_none() {
            tracing::warn!(ledger = %path.display(), bytes = torn, "the ledger ends in a half-written line (a crash while writing it): cutting it off");
            file.set_len(checked.valid_len as u64)
                .map_err(|e| format!("cannot repair the ledger {}: {e}", path.display()))?;
        }
        // No head, so nothing it said is vouched for (a new keys_dir, a
        // new key): keep it aside for whoever wants to look, and start a
        // new one, which gives up nothing a head would have protected.
        if let Some(p) = &checked.problem
            && head.is_none()
        {
            let aside = dir.join(format!(
                "{FILE}.{}.set-aside",
                humantime::format_rfc3339_seconds(SystemTime::now())
            ));
            tracing::warn!(ledger = %path.display(), aside = %aside.display(), line = p.line, reason = %p.reason, "the ledger does not check out and no head vouches for it (a new keys directory or key?): it is set aside and a new one started");
            std::fs::rename(&path, &aside)
                .map_err(|e| format!("cannot set the ledger {} aside: {e}", path.display()))?;
            drop(file);
            return Self::open(dir, head_path, key);
        }
        if let Some(p) = &checked.problem {
            return Err(format!(
                "the ledger {} is damaged at line {} (seq {}): {}; check it with `chokepoint sessions verify --all`, then move it aside (and remove {}) to start a new one",
                path.display(),
                p.line,
                p.seq,
                p.reason,
                head_path.display()
            ));
        }
        let mut anchors = head.as_ref().map(|h| h.open.clone()).unwrap_or_default();
        // A failed recording's anchor is in its ledger line too: a full
        // disk may have kept the head from taking it. The line wins over
        // a head from before the failure: the writer never wrote the
        // recording after it, and recovery holds the recording to end
        // exactly there, so an older anchor would call what it fsynced
        // last a forgery.
        for (session, e) in &checked.entries {
            if e.outcome == Outcome::Failed
                && let Some(anchor) = e.anchor()
            {
                anchors.insert(session.clone(), anchor);
            }
        }
        let known = Known {
            sessions: checked
                .entries
                .iter()
                .map(|(session, e)| (session.clone(), e.outcome))
                .collect(),
            anchors,
            fresh: checked.lines == 0,
        };
        let carried = known.anchors.clone();
        let listed = known
            .sessions
            .iter()
            .filter(|(_, o)| **o != Outcome::Removed)
            .map(|(s, _)| s.clone())
            .collect();
        let writer = LedgerWriter {
            file,
            path,
            head_path: head_path.to_path_buf(),
            prev: checked.last_hash,
            seq: checked.lines,
            len: checked.valid_len as u64,
            broken: None,
            first_seq: checked.first_seq,
            retry_compaction_at: 0,
            dirty: true,
            anchors: BTreeMap::new(),
            listed: Arc::new(Mutex::new(listed)),
            carried,
            anchors_changed: true,
        };
        Ok((writer, known))
    }

    /// Appends one signed line and writes it (fsync comes with
    /// [`LedgerWriter::sync`]).
    pub fn append(
        &mut self,
        key: &HostKey,
        outcome: Outcome,
        session: &str,
        events: u64,
        final_hash: &str,
    ) -> Result<(), String> {
        let mut entry = Entry {
            seq: self.seq,
            wall: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            outcome,
            session: session.to_owned(),
            events,
            final_hash: final_hash.to_owned(),
            public_key: key.public_hex(),
            signature: String::new(),
        };
        entry.signature = key.sign_bytes(&message(&self.prev, &entry));
        let event = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        let mut line = Vec::with_capacity(event.len() + 170);
        let hash = chain::append_line(&mut line, &self.prev, &event);
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if let Err(e) = self.file.write_all(&line) {
            let why = format!("cannot write the ledger {}: {e}", self.path.display());
            if let Err(cut) = self.file.set_len(self.len) {
                // A torn line stays: anything chained after it would be
                // refused at the next start, so nothing more is written
                // (and every new session is refused).
                self.broken = Some(format!(
                    "{why}; cutting the torn line off failed too ({cut}): the ledger takes no more lines until the daemon restarts"
                ));
            }
            return Err(why);
        }
        self.len += line.len() as u64;
        self.prev = hash;
        {
            let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            if outcome == Outcome::Removed {
                listed.remove(session);
            } else {
                listed.insert(session.to_owned());
            }
        }
        self.seq += 1;
        self.dirty = true;
        Ok(())
    }

    /// Compacts the ledger when it has grown to more than three lines per
    /// recording it still lists (and past [`COMPACT_MIN_LINES`]): each
    /// session costs two lines and retention a third, and without this
    /// the ledger would outgrow every `max_total_mb`.
    pub fn compact_if_due(&mut self, key: &HostKey) -> Result<bool, String> {
        let lines = self.seq - self.first_seq;
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        if !compaction_due(lines, listed) || self.seq < self.retry_compaction_at {
            return Ok(false);
        }
        if let Err(e) = self.compact(key) {
            self.retry_compaction_at = self.seq + COMPACT_MIN_LINES / 10;
            return Err(e);
        }
        Ok(true)
    }

    /// Replaces the ledger with one that holds only what it still says:
    /// each recording's newest entry that is not a removal, in their
    /// order and with their original time, continuing the chain (the
    /// first one's `prev_hash` is the old last line's hash, seqs go on),
    /// then a signed `compacted` line that vouches for all of them through
    /// its `prev_hash`. Removals and superseded lines are dropped. The
    /// restated lines are not signed one by one: with hundreds of
    /// thousands of recordings kept, that would stall the writer for
    /// seconds.
    ///
    /// The new file is written and fsynced beside the old one, locked, and
    /// renamed over it; the head then moves to it. A crash before the
    /// rename leaves the old ledger (the partial file is removed at the
    /// next start); one after it, before the head moves, leaves a head on
    /// the line the compaction continues from, which [`Ledger::check`]
    /// accepts.
    pub fn compact(&mut self, key: &HostKey) -> Result<(), String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        self.sync()?;
        let mut data = Vec::new();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_end(&mut data))
            .map_err(|e| format!("cannot read the ledger {}: {e}", self.path.display()))?;
        // Every line was written and fsynced by this writer under its lock:
        // the chain is checked again, the signatures need not be (but for
        // an earlier compaction's line, which is always checked).
        let current = Ledger::check(&data, &[key.public_hex()], None, u64::MAX);
        if let Some(p) = current.problem {
            return Err(format!(
                "cannot compact the ledger {}: line {} (seq {}): {}",
                self.path.display(),
                p.line,
                p.seq,
                p.reason
            ));
        }
        if current.lines != self.seq || current.last_hash != self.prev {
            return Err(format!(
                "cannot compact the ledger {}: it does not end where this writer left it",
                self.path.display()
            ));
        }
        let mut kept: Vec<Entry> = current
            .entries
            .into_values()
            .filter(|e| e.outcome != Outcome::Removed)
            .collect();
        kept.sort_by_key(|e| e.seq);

        let mut out = Vec::with_capacity(kept.len() * 600 + 600);
        let mut prev = self.prev.clone();
        let mut seq = self.seq;
        let public_key = key.public_hex();
        let compaction = Entry {
            seq: 0,
            wall: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            outcome: Outcome::Compacted,
            session: String::new(),
            events: kept.len() as u64,
            final_hash: String::new(),
            public_key: public_key.clone(),
            signature: String::new(),
        };
        for mut entry in kept.into_iter().chain(std::iter::once(compaction)) {
            entry.seq = seq;
            entry.public_key.clone_from(&public_key);
            entry.signature = if entry.outcome == Outcome::Compacted {
                key.sign_bytes(&message(&prev, &entry))
            } else {
                String::new()
            };
            let event = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            prev = chain::append_line(&mut out, &prev, &event);
            seq += 1;
        }

        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(COMPACTING);
        let io = |what: &str, e: std::io::Error| {
            format!("cannot compact the ledger: {what} {}: {e}", tmp.display())
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("creating", e))?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io("locking", e.into()))?;
        let written = (&*file).write_all(&out).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("writing", e));
        }
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("renaming", e));
        }
        // From here on the new file is the ledger, whatever fails next:
        // lines appended to the old one would be lost with its inode.
        let before = data.len();
        self.file = file;
        self.len = out.len() as u64;
        self.first_seq = self.seq;
        self.seq = seq;
        self.prev = prev;
        self.dirty = false;
        // The rename must be on disk before a head names the new lines.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
            format!(
                "cannot fsync {} after compacting the ledger: {e}",
                dir.display()
            )
        })?;
        self.anchors_changed = true;
        self.sync()?;
        tracing::info!(ledger = %self.path.display(), bytes_before = before, bytes_after = out.len(), lines = seq - self.first_seq, "compacted the ledger");
        Ok(())
    }

    /// The sessions the ledger has and retention has not removed, kept
    /// current.
    pub fn listed(&self) -> Arc<Mutex<HashSet<String>>> {
        self.listed.clone()
    }

    /// A recording the recovery pass sealed or listed: its old anchor is
    /// no longer needed.
    pub fn settled(&mut self, session: &str) {
        if self.carried.remove(session).is_some() {
            self.anchors_changed = true;
        }
    }

    /// A recording the writer gave up on (it could not be written): its
    /// last fsynced position stays in every head until a start settles
    /// it, so the next start seals it only if it still runs through it,
    /// and `verify` holds it to it meanwhile.
    pub fn keep_anchor(&mut self, session: &str, anchor: Anchor) {
        if self.carried.get(session) != Some(&anchor) {
            self.carried.insert(session.to_owned(), anchor);
            self.anchors_changed = true;
        }
    }

    /// The open recordings as just fsynced, for the next head.
    pub fn set_anchors(&mut self, anchors: BTreeMap<String, Anchor>) {
        if anchors != self.anchors {
            self.anchors = anchors;
            self.anchors_changed = true;
        }
    }

    /// Fsyncs what was appended, then moves the head to its last line
    /// (with the open recordings' anchors).
    pub fn sync(&mut self) -> Result<(), String> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| format!("cannot fsync the ledger {}: {e}", self.path.display()))?;
            self.dirty = false;
            self.anchors_changed = true;
        }
        if !self.anchors_changed {
            return Ok(());
        }
        if let Some(last) = self.seq.checked_sub(1) {
            let mut open = self.carried.clone();
            open.extend(self.anchors.iter().map(|(k, v)| (k.clone(), v.clone())));
            let head = Head {
                seq: last,
                hash: self.prev.clone(),
                open,
            };
            write_head(&self.head_path, &head).map_err(|e| {
                format!(
                    "cannot write the ledger head {}: {e}",
                    self.head_path.display()
                )
            })?;
        }
        self.anchors_changed = false;
        Ok(())
    }
}

/// A ledger as read back: the newest entry per session, and the first
/// problem, if any (entries after it are not trusted).
#[derive(Debug, Default)]
pub struct Ledger {
    pub entries: HashMap<String, Entry>,
    pub problem: Option<Problem>,
    /// The seq after the last trusted line: the lines read and trusted,
    /// plus those a compaction replaced.
    pub lines: u64,
    /// The seq of the file's first line: 0, or where a compaction started
    /// it.
    pub first_seq: u64,
    /// Bytes of those lines.
    pub valid_len: usize,
    /// Where the first trusted stretch that covers the head's line ends
    /// (`None`: none does, or there is no head): a repair never cuts
    /// below it.
    pub head_end: Option<usize>,
    /// The hash of the last trusted line (the genesis hash for none).
    pub last_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub seq: u64,
    pub reason: String,
}

impl Ledger {
    /// Reads and checks the ledger in `dir` against `head` (from the keys
    /// directory, when there is one); `None` when there is neither a
    /// ledger nor a head (recordings from before the ledger, another
    /// machine's copy).
    pub fn read(
        dir: &Path,
        trusted: &[String],
        head: Option<&Head>,
    ) -> Result<Option<Ledger>, String> {
        let path = dir.join(FILE);
        match crate::regular_file::read_bounded(&path, MAX_BYTES) {
            Ok(data) => Ok(Some(Ledger::check(&data, trusted, head, 0))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(head.map(|h| Ledger {
                problem: Some(Problem {
                    line: 1,
                    seq: 0,
                    reason: format!(
                        "the ledger {} is gone, but its head says it had {} lines",
                        path.display(),
                        h.seq.saturating_add(1)
                    ),
                }),
                last_hash: chain::GENESIS.to_owned(),
                ..Ledger::default()
            })),
            Err(e) => Err(format!("cannot read the ledger {}: {e}", path.display())),
        }
    }

    /// Checks a ledger's bytes: chain, order, the signature of every line
    /// from `signed_from` on, and that it reaches `head`.
    ///
    /// A compacted ledger starts mid-chain with restated lines, unsigned,
    /// followed by the signed `compacted` line whose `prev_hash` commits
    /// to all of them (and to the line they continue from): they are
    /// trusted only once it checks out, so its signature is checked
    /// whatever `signed_from` says.
    pub fn check(data: &[u8], trusted: &[String], head: Option<&Head>, signed_from: u64) -> Ledger {
        let mut ledger = Ledger {
            last_hash: chain::GENESIS.to_owned(),
            ..Ledger::default()
        };
        let mut reached_head = head.is_none();
        // Restated lines waiting for their compaction line, and their bytes.
        let mut restated: Option<(Vec<Entry>, usize)> = None;
        for (i, line) in data.split_inclusive(|&b| b == b'\n').enumerate() {
            let seq = ledger.first_seq + i as u64;
            let fail = |reason: String| Problem {
                line: i + 1,
                seq,
                reason,
            };
            let Some(line) = line.strip_suffix(b"\n") else {
                // A line being written right now (read while the daemon
                // runs) is past the head: not a problem yet.
                if head.is_none_or(|h| seq > h.seq) {
                    break;
                }
                ledger.problem = Some(fail("the ledger ends inside this line".into()));
                break;
            };
            let (hash, prev_hash, event) = match chain::split(line) {
                Ok(parts) => parts,
                Err(why) => {
                    ledger.problem = Some(fail(why.into()));
                    break;
                }
            };
            if i == 0 && prev_hash != chain::GENESIS && starts_compaction(event) {
                ledger.last_hash = prev_hash.to_owned();
                restated = Some((Vec::new(), 0));
            }
            let prev = &ledger.last_hash;
            if prev_hash != prev {
                ledger.problem = Some(fail(
                    "prev_hash does not match the line before: a line was removed, inserted or moved".into(),
                ));
                break;
            }
            if chain::hash(prev, event) != hash {
                ledger.problem = Some(fail(
                    "the hash does not match the entry: the line was changed".into(),
                ));
                break;
            }
            let entry: Entry = match serde_json::from_slice(event) {
                Ok(e) => e,
                Err(e) => {
                    ledger.problem = Some(fail(format!("the entry is not valid: {e}")));
                    break;
                }
            };
            if i == 0 && restated.is_some() {
                // Unsigned until its compaction line: every later seq is
                // this one plus a line index (fewer than the bytes), so a
                // forged seq that could overflow is refused here.
                if entry.seq.checked_add(data.len() as u64).is_none() {
                    ledger.problem = Some(fail(format!(
                        "the ledger starts at seq {}, too large to continue from",
                        entry.seq
                    )));
                    break;
                }
                ledger.first_seq = entry.seq;
                ledger.lines = entry.seq;
                if let Some(h) = head
                    && h.seq < entry.seq
                {
                    // A crash between the compacted file taking the
                    // ledger's place and the head moving to it leaves the
                    // head on the line the compaction continues from.
                    if h.seq + 1 == entry.seq && h.hash == prev_hash {
                        reached_head = true;
                    } else {
                        ledger.problem = Some(fail(format!(
                            "the ledger starts at seq {}, after the line its head names (seq {}): it was replaced",
                            entry.seq, h.seq
                        )));
                        break;
                    }
                }
            }
            let seq = ledger.first_seq + i as u64;
            let fail = |reason: String| Problem {
                line: i + 1,
                seq,
                reason,
            };
            if entry.seq != seq {
                ledger.problem = Some(fail(format!("seq is {} where {seq} belongs", entry.seq)));
                break;
            }
            if let Err(why) = entry.check_final_hash() {
                ledger.problem = Some(fail(why));
                break;
            }
            let compaction = entry.outcome == Outcome::Compacted;
            if compaction && restated.is_none() {
                ledger.problem = Some(fail(
                    "a compaction line with no compacted lines before it".into(),
                ));
                break;
            }
            if compaction
                && restated
                    .as_ref()
                    .is_some_and(|(r, _)| r.len() as u64 != entry.events)
            {
                ledger.problem = Some(fail(format!(
                    "the compaction line counts {} lines before it, and there are {i}",
                    entry.events
                )));
                break;
            }
            let vouched_later = restated.is_some() && !compaction;
            if (seq >= signed_from || compaction) && !vouched_later {
                if !trusted.contains(&entry.public_key) {
                    ledger.problem = Some(fail(format!(
                        "the entry is signed by key {}, which is not trusted here",
                        entry.public_key
                    )));
                    break;
                }
                if !keys::verify_bytes(&entry.public_key, &message(prev, &entry), &entry.signature)
                {
                    ledger.problem = Some(fail("the entry's signature does not verify".into()));
                    break;
                }
            }
            if let Some(h) = head
                && h.seq == seq
            {
                if h.hash != hash {
                    ledger.problem = Some(fail(
                        "the line is not the one the ledger's head names: the ledger was replaced"
                            .into(),
                    ));
                    break;
                }
                reached_head = true;
            }
            ledger.last_hash = hash.to_owned();
            if vouched_later {
                if let Some((entries, len)) = &mut restated {
                    entries.push(entry);
                    *len += line.len() + 1;
                }
                continue;
            }
            if let Some((entries, len)) = restated.take() {
                ledger.valid_len += len;
                for e in entries {
                    ledger.entries.insert(e.session.clone(), e);
                }
            }
            ledger.lines = seq + 1;
            ledger.valid_len += line.len() + 1;
            if reached_head && head.is_some() && ledger.head_end.is_none() {
                ledger.head_end = Some(ledger.valid_len);
            }
            if !compaction {
                ledger.entries.insert(entry.session.clone(), entry);
            }
        }
        if let Some((entries, _)) = &restated
            && ledger.problem.is_none()
        {
            ledger.problem = Some(Problem {
                line: entries.len() + 1,
                seq: ledger.first_seq + entries.len() as u64,
                reason: format!(
                    "the ledger ends after {} compacted lines, before the compaction line that vouches for them",
                    entries.len()
                ),
            });
        }
        if !reached_head
            && ledger.problem.is_none()
            && let Some(h) = head
        {
            ledger.problem = Some(Problem {
                line: (ledger.lines - ledger.first_seq) as usize + 1,
                seq: ledger.lines,
                reason: format!(
                    "the ledger ends after {} lines, but its head says it had {}: it was cut short",
                    ledger.lines,
                    h.seq.saturating_add(1)
                ),
            });
        }
        ledger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        dir: tempfile::TempDir,
        key: HostKey,
    }

    impl Host {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let key = HostKey::load_or_create(&dir.path().join("keys")).unwrap();
            Self { dir, key }
        }

        fn sessions(&self) -> PathBuf {
            self.dir.path().join("sessions")
        }

        fn head(&self) -> PathBuf {
            head_path(&self.dir.path().join("keys"), &self.sessions())
        }

        fn open(&self) -> Result<(LedgerWriter, Known), String> {
            std::fs::create_dir_all(self.sessions()).unwrap();
            LedgerWriter::open(&self.sessions(), &self.head(), &self.key)
        }

        fn trusted(&self) -> Vec<String> {
            vec![self.key.public_hex()]
        }

        fn read(&self) -> Ledger {
            let head = read_head(&self.head()).unwrap();
            Ledger::read(&self.sessions(), &self.trusted(), head.as_ref())
                .unwrap()
                .unwrap()
        }

        /// Three sealed sessions, synced (the head names the third).
        fn three_lines(&self) -> Vec<u8> {
            let (mut ledger, _) = self.open().unwrap();
            for (i, s) in ["s1", "s2", "s3"].iter().enumerate() {
                ledger
                    .append(&self.key, Outcome::Sealed, s, i as u64 + 3, &"c".repeat(64))
                    .unwrap();
            }
            ledger.sync().unwrap();
            drop(ledger);
            std::fs::read(self.sessions().join(FILE)).unwrap()
        }
    }

    #[test]
    fn entries_round_trip_and_the_chain_continues_after_a_reopen() {
        let host = Host::new();
        {
            let (mut ledger, known) = host.open().unwrap();
            assert!(known.fresh && known.sessions.is_empty());
            ledger
                .append(&host.key, Outcome::Opened, "s1", 0, "")
                .unwrap();
            ledger
                .append(&host.key, Outcome::Sealed, "s1", 9, &"a".repeat(64))
                .unwrap();
            ledger.sync().unwrap();
        }
        let (mut ledger, known) = host.open().unwrap();
        assert!(!known.fresh);
        assert_eq!(known.sessions["s1"], Outcome::Sealed);
        ledger
            .append(&host.key, Outcome::Recovered, "s2", 4, &"b".repeat(64))
            .unwrap();
        ledger
            .append(&host.key, Outcome::Removed, "s1", 0, "")
            .unwrap();
        ledger.sync().unwrap();
        drop(ledger);
        let read = host.read();
        assert_eq!(read.problem, None);
        assert_eq!(read.entries["s1"].outcome, Outcome::Removed);
        assert_eq!(read.entries["s2"].outcome, Outcome::Recovered);
        assert_eq!(read.entries["s2"].seq, 2);
    }

    #[test]
    fn a_signed_seal_whose_final_hash_is_not_hex_is_a_bad_line() {
        let host = Host::new();
        {
            let (mut ledger, _) = host.open().unwrap();
            ledger
                .append(&host.key, Outcome::Sealed, "s1", 3, &"é".repeat(32))
                .unwrap();
            ledger
                .append(&host.key, Outcome::Opened, "s2", 0, &"a".repeat(64))
                .unwrap();
        }
        let data = std::fs::read(host.sessions().join(FILE)).unwrap();
        let problem = Ledger::check(&data, &host.trusted(), None, 0)
            .problem
            .unwrap();
        assert_eq!((problem.line, problem.seq), (1, 0), "{problem:?}");
        assert!(
            problem.reason.contains("is not 64 lowercase hex digits"),
            "{problem:?}"
        );
        let second = data.split_inclusive(|&b| b == b'\n').nth(1).unwrap();
        let (_, _, event) = chain::split(second.strip_suffix(b"\n").unwrap()).unwrap();
        let entry: Entry = serde_json::from_slice(event).unwrap();
        assert!(
            entry
                .check_final_hash()
                .unwrap_err()
                .contains("is not empty")
        );
    }

    #[test]
    fn a_fifo_as_the_ledger_is_an_error_naming_it_not_a_hang() {
        let host = Host::new();
        std::fs::create_dir_all(host.sessions()).unwrap();
        let path = host.sessions().join(FILE);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = Ledger::read(&host.sessions(), &host.trusted(), None).unwrap_err();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("a FIFO, not a regular file"),
            "{e}"
        );
        let Err(e) = host.open() else {
            panic!("the daemon took a FIFO for its ledger");
        };
        assert!(
            e.contains(&path.display().to_string()) && e.contains("a FIFO, not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn a_second_daemon_cannot_open_the_same_ledger() {
        let host = Host::new();
        let _first = host.open().unwrap();
        let Err(e) = host.open() else {
            panic!("two writers on one ledger");
        };
        assert!(e.contains("another chokepoint daemon"), "{e}");
    }

    #[test]
    fn a_removed_or_changed_line_is_found() {
        let host = Host::new();
        let data = host.three_lines();
        let trusted = host.trusted();
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();

        let without_middle = [lines[0], lines[2]].concat();
        let problem = Ledger::check(&without_middle, &trusted, None, 0)
            .problem
            .unwrap();
        assert_eq!((problem.line, problem.seq), (2, 1), "{problem:?}");
        assert!(problem.reason.contains("prev_hash"), "{problem:?}");

        // A changed count with the chain hashes recomputed: only the
        // signature can tell.
        let (_, prev, event) = chain::split(lines[1].strip_suffix(b"\n").unwrap()).unwrap();
        let forged = String::from_utf8(event.to_vec())
            .unwrap()
            .replace("\"events\":4", "\"events\":2");
        let mut line = Vec::new();
        let new_hash = chain::append_line(&mut line, prev, forged.as_bytes());
        let mut rest = Vec::new();
        let (_, _, third) = chain::split(lines[2].strip_suffix(b"\n").unwrap()).unwrap();
        chain::append_line(&mut rest, &new_hash, third);
        let relinked = [lines[0], &line, &rest].concat();
        let problem = Ledger::check(&relinked, &trusted, None, 0).problem.unwrap();
        assert_eq!(problem.line, 2, "{problem:?}");
        assert!(problem.reason.contains("signature"), "{problem:?}");

        let untrusted = Ledger::check(&data, &["00".repeat(32)], None, 0)
            .problem
            .unwrap();
        assert_eq!(untrusted.line, 1);
        assert!(untrusted.reason.contains("not trusted"), "{untrusted:?}");
    }

    #[test]
    fn a_ledger_cut_short_or_gone_is_caught_by_its_head() {
        let host = Host::new();
        let data = host.three_lines();
        let path = host.sessions().join(FILE);
        // Cut at a line boundary: a valid chain, but short of the head.
        let two: Vec<u8> = data
            .split_inclusive(|&b| b == b'\n')
            .take(2)
            .collect::<Vec<_>>()
            .concat();
        std::fs::write(&path, &two).unwrap();
        let problem = host.read().problem.unwrap();
        assert!(problem.reason.contains("cut short"), "{problem:?}");
        let Err(e) = host.open() else {
            panic!("the daemon took a cut ledger");
        };
        assert!(
            e.contains("cut short") && e.contains("move it aside"),
            "{e}"
        );
        // Gone altogether.
        std::fs::remove_file(&path).unwrap();
        let problem = host.read().problem.unwrap();
        assert!(problem.reason.contains("is gone"), "{problem:?}");
    }

    #[test]
    fn lines_past_the_head_that_do_not_check_out_are_cut_off() {
        let host = Host::new();
        host.three_lines();
        let other = HostKey::load_or_create(&host.dir.path().join("other-keys")).unwrap();
        // Written with another key, past the head (never fsynced as far
        // as the head knows): only its signature tells it from a line the
        // daemon wrote just before a crash. It is cut off, not obeyed.
        let mut forger = {
            let (w, _) = host.open().unwrap();
            w
        };
        forger
            .append(&other, Outcome::Removed, "s2", 0, "")
            .unwrap();
        drop(forger);
        let (mut ledger, known) = host.open().unwrap();
        assert_eq!(known.sessions["s2"], Outcome::Sealed);
        ledger.sync().unwrap();
        drop(ledger);
        let read = host.read();
        assert_eq!(read.problem, None);
        assert_eq!(read.lines, 3);
        // A bad line the head covers is another matter: the daemon stops.
        let data = std::fs::read(host.sessions().join(FILE)).unwrap();
        let forged = String::from_utf8(data)
            .unwrap()
            .replacen("\"s2\"", "\"s9\"", 1);
        std::fs::write(host.sessions().join(FILE), forged).unwrap();
        let Err(e) = host.open() else {
            panic!("opened a ledger with a changed line");
        };
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_ledger_replaced_by_a_line_that_claims_to_follow_the_head_stops_the_daemon() {
        let host = Host::new();
        host.three_lines();
        let head = read_head(&host.head()).unwrap().unwrap();
        // Unsigned, continuing from the head: it reads as the first
        // restated line of a compaction cut short.
        let entry = Entry {
            seq: head.seq + 1,
            wall: "2026-11-27T00:00:00Z".into(),
            outcome: Outcome::Opened,
            session: "s9".into(),
            events: 0,
            final_hash: String::new(),
            public_key: String::new(),
            signature: String::new(),
        };
        let mut forged = Vec::new();
        chain::append_line(
            &mut forged,
            &head.hash,
            &serde_json::to_vec(&entry).unwrap(),
        );
        let path = host.sessions().join(FILE);
        std::fs::write(&path, &forged).unwrap();
        let Err(e) = host.open() else {
            panic!("the daemon took a replaced ledger");
        };
        assert!(
            e.contains(&path.display().to_string()) && e.contains("replaced"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            forged,
            "the evidence was cut"
        );
        // The same with a torn tail: nothing is cut either.
        let mut torn = forged.clone();
        torn.extend_from_slice(b"{\"hash\":\"01");
        std::fs::write(&path, &torn).unwrap();
        assert!(host.open().is_err());
        assert_eq!(std::fs::read(&path).unwrap(), torn);
    }

    #[test]
    fn a_half_written_last_line_is_cut_off_and_the_chain_goes_on() {
        let host = Host::new();
        let data = host.three_lines();
        // A fourth line that was never fsynced (the head names the third).
        let mut torn = data.clone();
        torn.extend_from_slice(b"{\"hash\":\"0123");
        std::fs::write(host.sessions().join(FILE), &torn).unwrap();
        let (mut ledger, known) = host.open().unwrap();
        assert!(known.sessions.contains_key("s3"));
        ledger
            .append(&host.key, Outcome::Sealed, "s4", 5, &"c".repeat(64))
            .unwrap();
        ledger.sync().unwrap();
        drop(ledger);
        let read = host.read();
        assert_eq!(read.problem, None);
        assert_eq!(read.entries.len(), 4);
    }

    #[test]
    fn a_ledger_no_head_vouches_for_is_set_aside_when_it_does_not_check_out() {
        let host = Host::new();
        host.three_lines();
        // A new keys directory: a new key and no head.
        std::fs::remove_file(host.head()).unwrap();
        let other = HostKey::load_or_create(&host.dir.path().join("new-keys")).unwrap();
        let (ledger, known) = LedgerWriter::open(&host.sessions(), &host.head(), &other).unwrap();
        drop(ledger);
        assert!(known.fresh && known.sessions.is_empty());
        let aside: Vec<_> = std::fs::read_dir(host.sessions())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".set-aside"))
            .collect();
        assert_eq!(aside.len(), 1, "the old ledger was not kept aside");
    }

    #[test]
    fn a_damaged_ledger_stops_the_writer_with_a_way_out() {
        let host = Host::new();
        let data = host.three_lines();
        let text = String::from_utf8(data)
            .unwrap()
            .replacen("{\"hash\"", "{\"hush\"", 2);
        std::fs::write(host.sessions().join(FILE), text).unwrap();
        let Err(e) = host.open() else {
            panic!("opened a damaged ledger");
        };
        assert!(e.contains("line 1") && e.contains("move it aside"), "{e}");
    }

    /// Opens, seals and (for every third) removes `n` sessions, synced.
    fn busy(host: &Host, n: usize) -> LedgerWriter {
        let (mut ledger, _) = host.open().unwrap();
        for i in 0..n {
            let s = format!("s{i}");
            ledger
                .append(&host.key, Outcome::Opened, &s, 0, "")
                .unwrap();
            ledger
                .append(
                    &host.key,
                    Outcome::Sealed,
                    &s,
                    i as u64 + 2,
                    &"d".repeat(64),
                )
                .unwrap();
            if i % 3 == 0 {
                ledger
                    .append(&host.key, Outcome::Removed, &s, 0, "")
                    .unwrap();
            }
        }
        ledger
            .append(&host.key, Outcome::Opened, "running", 0, "")
            .unwrap();
        ledger.sync().unwrap();
        ledger
    }

    #[test]
    fn a_compacted_ledger_keeps_what_it_says_and_the_chain_goes_on() {
        let host = Host::new();
        let mut ledger = busy(&host, 30);
        let before = host.read();
        assert_eq!(before.problem, None);
        let next = before.lines;
        ledger.compact(&host.key).unwrap();
        // Appends continue the same numbering after it.
        ledger
            .append(&host.key, Outcome::Sealed, "running", 5, &"e".repeat(64))
            .unwrap();
        ledger.sync().unwrap();
        drop(ledger);

        let data = std::fs::read(host.sessions().join(FILE)).unwrap();
        // 20 kept + the one running, the compaction line, one appended.
        assert_eq!(data.iter().filter(|&&b| b == b'\n').count(), 23);
        let after = host.read();
        assert_eq!(after.problem, None);
        assert_eq!(after.first_seq, next);
        assert_eq!(after.lines, next + 23);
        for (session, entry) in &before.entries {
            match entry.outcome {
                Outcome::Removed => assert!(!after.entries.contains_key(session), "{session}"),
                _ if session == "running" => {}
                _ => {
                    let kept = &after.entries[session];
                    assert_eq!(
                        (kept.outcome, kept.events, &kept.final_hash, &kept.wall),
                        (entry.outcome, entry.events, &entry.final_hash, &entry.wall),
                        "{session}"
                    );
                }
            }
        }
        assert_eq!(after.entries["running"].outcome, Outcome::Sealed);

        // The daemon reopens it, and a second compaction goes on from it.
        let (mut ledger, known) = host.open().unwrap();
        assert_eq!(known.sessions.len(), 21);
        ledger.compact(&host.key).unwrap();
        drop(ledger);
        assert_eq!(host.read().problem, None);
        let (_, again) = host.open().unwrap();
        assert_eq!(again.sessions, known.sessions);
    }

    #[test]
    fn compaction_is_due_when_most_lines_would_go() {
        assert!(!compaction_due(COMPACT_MIN_LINES, 0));
        assert!(compaction_due(COMPACT_MIN_LINES + 1, 0));
        assert!(
            !compaction_due(60_000, 20_000),
            "three lines per listed recording"
        );
        assert!(compaction_due(60_001, 20_000));
        assert!(!compaction_due(u64::MAX, u64::MAX));
    }

    #[test]
    fn compaction_waits_for_enough_lines_to_drop() {
        let host = Host::new();
        let mut ledger = busy(&host, 30);
        assert!(
            !ledger.compact_if_due(&host.key).unwrap(),
            "below the minimum"
        );
        drop(ledger);
        let data = std::fs::read(host.sessions().join(FILE)).unwrap();
        assert_eq!(data.iter().filter(|&&b| b == b'\n').count(), 71);
    }

    #[test]
    fn a_crash_around_the_compaction_loses_nothing() {
        let host = Host::new();
        let mut ledger = busy(&host, 9);
        let old_head = std::fs::read(host.head()).unwrap();
        ledger.compact(&host.key).unwrap();
        drop(ledger);
        // Crash after the rename, before the head moved: the old head
        // names the line the compaction continues from.
        let new_head = std::fs::read(host.head()).unwrap();
        std::fs::write(host.head(), &old_head).unwrap();
        assert_eq!(host.read().problem, None);
        let (ledger, known) = host.open().unwrap();
        assert_eq!(known.sessions.len(), 7);
        drop(ledger);

        // Crash before the rename: the partial file is dropped at start.
        std::fs::write(host.head(), &new_head).unwrap();
        std::fs::write(host.sessions().join(COMPACTING), b"{\"hash\":").unwrap();
        let (ledger, again) = host.open().unwrap();
        assert_eq!(again.sessions, known.sessions);
        assert!(!host.sessions().join(COMPACTING).exists());
        drop(ledger);
    }

    #[test]
    fn a_compacted_ledger_is_as_tamper_evident_as_before() {
        let host = Host::new();
        let mut ledger = busy(&host, 9);
        ledger.compact(&host.key).unwrap();
        drop(ledger);
        let path = host.sessions().join(FILE);
        let good = std::fs::read(&path).unwrap();
        let lines: Vec<&[u8]> = good.split_inclusive(|&b| b == b'\n').collect();
        let problem = |data: &[u8]| {
            let head = read_head(&host.head()).unwrap();
            Ledger::check(data, &host.trusted(), head.as_ref(), 0)
                .problem
                .map(|p| p.reason)
                .unwrap_or_default()
        };
        assert_eq!(problem(&good), "");

        // A restated line changed, with its hash and every later one
        // recomputed: the compaction line's signature no longer holds.
        let mut forged = Vec::new();
        let mut prev = String::new();
        for (i, line) in lines.iter().enumerate() {
            let (_, p, event) = chain::split(line.strip_suffix(b"\n").unwrap()).unwrap();
            if i == 0 {
                prev = p.to_owned();
            }
            let event = if i == 2 {
                String::from_utf8(event.to_vec())
                    .unwrap()
                    .replacen("\"events\":", "\"events\":1", 1)
                    .into_bytes()
            } else {
                event.to_vec()
            };
            prev = chain::append_line(&mut forged, &prev, &event);
        }
        assert!(
            problem(&forged).contains("signature does not verify"),
            "{}",
            problem(&forged)
        );

        // Restated lines without their compaction line.
        let cut: Vec<u8> = lines[..lines.len() - 1].concat();
        assert!(
            problem(&cut).contains("before the compaction line"),
            "{}",
            problem(&cut)
        );
        let no_head = Ledger::check(&cut, &host.trusted(), None, 0)
            .problem
            .unwrap();
        assert!(
            no_head.reason.contains("before the compaction line"),
            "{no_head:?}"
        );

        // The first restated line removed: the chain breaks at the next.
        let headless: Vec<u8> = lines[1..].concat();
        assert!(!problem(&headless).is_empty());

        // A head from before the compaction that it does not continue
        // from: the ledger was replaced.
        let mut stale = read_head(&host.head()).unwrap().unwrap();
        stale.seq = 2;
        let replaced = Ledger::check(&good, &host.trusted(), Some(&stale), 0)
            .problem
            .unwrap();
        assert!(replaced.reason.contains("it was replaced"), "{replaced:?}");
    }

    /// A line of an edited ledger (or head) with a seq near u64::MAX: every
    /// seq after it would overflow. Refused as a problem, not a panic (debug)
    /// or a wrapped seq (release).
    #[test]
    fn a_seq_too_large_to_continue_from_is_a_problem_not_an_overflow() {
        let restated = |seq: u64, session: &str| Entry {
            seq,
            wall: "2026-11-27T00:00:00Z".into(),
            outcome: Outcome::Opened,
            session: session.into(),
            events: 0,
            final_hash: String::new(),
            public_key: String::new(),
            signature: String::new(),
        };
        for seq in [u64::MAX, u64::MAX - 1] {
            // Restated lines (unsigned) continue a chain: any prev_hash.
            let mut data = Vec::new();
            let mut prev = "1".repeat(64);
            for (i, session) in ["s1", "s2"].iter().enumerate() {
                let entry = restated(seq.wrapping_add(i as u64), session);
                let event = serde_json::to_vec(&entry).unwrap();
                prev = chain::append_line(&mut data, &prev, &event);
            }
            let first_line = data.iter().position(|&b| b == b'\n').unwrap() + 1;
            for data in [&data[..first_line], &data[..]] {
                let problem = Ledger::check(data, &[], None, 0).problem.unwrap();
                assert_eq!(problem.line, 1, "{problem:?}");
                assert!(problem.reason.contains("too large"), "{problem:?}");
            }
        }
        // A head naming the last possible seq: the ledger falls short of it.
        let head = Head {
            seq: u64::MAX,
            hash: "2".repeat(64),
            open: BTreeMap::new(),
        };
        let problem = Ledger::check(b"", &[], Some(&head), 0).problem.unwrap();
        assert!(problem.reason.contains("cut short"), "{problem:?}");
    }
}
