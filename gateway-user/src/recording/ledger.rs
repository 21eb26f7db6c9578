//! The host's ledger of ended sessions: `<dir>/ledger.jsonl`, one signed,
//! hash-chained line per sealed, recovered or removed recording.
//!
//! A recording's own seal proves what it holds, but not that it was ever
//! sealed: cut the file short and drop the seal, and it reads like a
//! session the gateway never finished. The ledger remembers every seal
//! somewhere else, so `verify` tells a cut-short recording ("the ledger
//! has it sealed after 9 events") from a crash, and `verify --all` finds
//! recordings deleted outright. Each line is signed with the host key
//! over its content and the line before it: a line can be neither changed
//! nor removed from the middle. Only the newest lines can be cut off
//! unnoticed, together with every session after them.
//!
//! Lines use the recordings' chain format ([`super::chain`]):
//!
//! ```text
//! {"hash":H,"prev_hash":P,"event":{"seq":3,"wall":"…","type":"sealed","session":"20261127T…","events":9,"final_hash":"…","public_key":"…","signature":"…"}}
//! ```
use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{chain, keys, keys::HostKey};

/// The ledger's file name in the recordings directory.
pub const FILE: &str = "ledger.jsonl";

/// What became of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sealed at its session's end.
    Sealed,
    /// Sealed at the gateway's next start: it stopped mid-session.
    Recovered,
    /// Removed by retention.
    Removed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sealed => "sealed",
            Outcome::Recovered => "recovered",
            Outcome::Removed => "removed",
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

/// The daemon's open ledger: locked for its lifetime, so two daemons
/// never interleave one chain.
pub struct LedgerWriter {
    file: Flock<File>,
    path: PathBuf,
    prev: String,
    seq: u64,
    dirty: bool,
}

impl LedgerWriter {
    /// Opens (or starts) the ledger in `dir` and finds where its chain
    /// ends. Also returns the sessions it already names.
    pub fn open(dir: &Path) -> Result<(LedgerWriter, HashSet<String>), String> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open the ledger {}: {e}", path.display()))?;
        let mut file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!(
                "the ledger {} is locked ({e}): another chokepoint daemon records into {}; give each instance its own [recording] dir",
                path.display(),
                dir.display()
            )
        })?;
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut data))
            .map_err(|e| format!("cannot read the ledger {}: {e}", path.display()))?;
        // A crash (power loss) can leave the last line half written. What
        // it held is the seal of a recording that has its own seal, and
        // the recovery pass at start lists that recording again.
        let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < data.len() {
            tracing::warn!(ledger = %path.display(), bytes = data.len() - whole, "the ledger ends in a half-written line (a crash while writing it): cutting it off");
            file.set_len(whole as u64)
                .map_err(|e| format!("cannot repair the ledger {}: {e}", path.display()))?;
            data.truncate(whole);
        }
        let mut known = HashSet::new();
        let (mut prev, mut seq) = (chain::GENESIS.to_owned(), 0);
        for (i, line) in data.split_inclusive(|&b| b == b'\n').enumerate() {
            let broken = |why: &str| {
                format!(
                    "the ledger {} is damaged at line {} ({why}): check it with `chokepoint sessions verify --all`, then move it aside to start a new one",
                    path.display(),
                    i + 1
                )
            };
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let (hash, _, event) = chain::split(line).map_err(broken)?;
            let entry: Entry = serde_json::from_slice(event).map_err(|e| broken(&e.to_string()))?;
            prev = hash.to_owned();
            seq = entry.seq + 1;
            known.insert(entry.session);
        }
        let writer = LedgerWriter {
            file,
            path,
            prev,
            seq,
            dirty: false,
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
        self.file
            .write_all(&line)
            .map_err(|e| format!("cannot write the ledger {}: {e}", self.path.display()))?;
        self.prev = hash;
        self.seq += 1;
        self.dirty = true;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), String> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| format!("cannot fsync the ledger {}: {e}", self.path.display()))?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// A ledger as read back for `verify`: the newest entry per session, and
/// the first problem, if any (entries after it are not trusted).
#[derive(Debug, Default)]
pub struct Ledger {
    pub entries: HashMap<String, Entry>,
    pub problem: Option<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub seq: u64,
    pub reason: String,
}

impl Ledger {
    /// Reads and checks the ledger in `dir`; `None` when there is none
    /// (recordings from before the ledger, or another store).
    pub fn read(dir: &Path, trusted: &[String]) -> Result<Option<Ledger>, String> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(Ledger::check(&data, trusted))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read the ledger {}: {e}", path.display())),
        }
    }

    /// Checks a ledger's bytes: chain, order and every signature.
    pub fn check(data: &[u8], trusted: &[String]) -> Ledger {
        let mut ledger = Ledger::default();
        let mut prev = chain::GENESIS.to_owned();
        for (i, line) in data.split_inclusive(|&b| b == b'\n').enumerate() {
            let seq = i as u64;
            let fail = |reason: String| Problem {
                line: i + 1,
                seq,
                reason,
            };
            let Some(line) = line.strip_suffix(b"\n") else {
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
            if prev_hash != prev {
                ledger.problem = Some(fail(
                    "prev_hash does not match the line before: a line was removed, inserted or moved".into(),
                ));
                break;
            }
            if chain::hash(&prev, event) != hash {
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
            if entry.seq != seq {
                ledger.problem = Some(fail(format!("seq is {} where {seq} belongs", entry.seq)));
                break;
            }
            if !trusted.contains(&entry.public_key) {
                ledger.problem = Some(fail(format!(
                    "the entry is signed by key {}, which is not trusted here",
                    entry.public_key
                )));
                break;
            }
            if !keys::verify_bytes(&entry.public_key, &message(&prev, &entry), &entry.signature) {
                ledger.problem = Some(fail("the entry's signature does not verify".into()));
                break;
            }
            prev = hash.to_owned();
            ledger.entries.insert(entry.session.clone(), entry);
        }
        ledger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path) -> HostKey {
        HostKey::load_or_create(&dir.join("keys")).expect("key")
    }

    #[test]
    fn entries_round_trip_and_the_chain_continues_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path());
        let trusted = vec![key.public_hex()];
        {
            let (mut ledger, known) = LedgerWriter::open(dir.path()).unwrap();
            assert!(known.is_empty());
            ledger
                .append(&key, Outcome::Sealed, "s1", 9, &"a".repeat(64))
                .unwrap();
            ledger.sync().unwrap();
        }
        let (mut ledger, known) = LedgerWriter::open(dir.path()).unwrap();
        assert!(known.contains("s1"));
        ledger
            .append(&key, Outcome::Recovered, "s2", 4, &"b".repeat(64))
            .unwrap();
        ledger.append(&key, Outcome::Removed, "s1", 0, "").unwrap();
        drop(ledger);
        let read = Ledger::read(dir.path(), &trusted).unwrap().unwrap();
        assert_eq!(read.problem, None);
        assert_eq!(read.entries["s1"].outcome, Outcome::Removed);
        assert_eq!(read.entries["s2"].outcome, Outcome::Recovered);
        assert_eq!(read.entries["s2"].seq, 1);
    }

    #[test]
    fn a_second_daemon_cannot_open_the_same_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LedgerWriter::open(dir.path()).unwrap();
        let Err(e) = LedgerWriter::open(dir.path()) else {
            panic!("two writers on one ledger");
        };
        assert!(e.contains("another chokepoint daemon"), "{e}");
    }

    fn three_lines(dir: &Path) -> (Vec<u8>, Vec<String>) {
        let key = key(dir);
        let (mut ledger, _) = LedgerWriter::open(dir).unwrap();
        for (i, s) in ["s1", "s2", "s3"].iter().enumerate() {
            ledger
                .append(&key, Outcome::Sealed, s, i as u64 + 3, &"c".repeat(64))
                .unwrap();
        }
        drop(ledger);
        (
            std::fs::read(dir.join(FILE)).unwrap(),
            vec![key.public_hex()],
        )
    }

    #[test]
    fn a_removed_or_changed_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (data, trusted) = three_lines(dir.path());
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();

        let without_middle = [lines[0], lines[2]].concat();
        let problem = Ledger::check(&without_middle, &trusted).problem.unwrap();
        assert_eq!((problem.line, problem.seq), (2, 1), "{problem:?}");
        assert!(problem.reason.contains("prev_hash"), "{problem:?}");

        // A changed count with the chain hashes recomputed: only the
        // signature can tell.
        let (hash, prev, event) = chain::split(lines[1].strip_suffix(b"\n").unwrap()).unwrap();
        let _ = hash;
        let forged = String::from_utf8(event.to_vec())
            .unwrap()
            .replace("\"events\":4", "\"events\":2");
        let mut line = Vec::new();
        let new_hash = chain::append_line(&mut line, prev, forged.as_bytes());
        let mut rest = Vec::new();
        let (_, _, third) = chain::split(lines[2].strip_suffix(b"\n").unwrap()).unwrap();
        chain::append_line(&mut rest, &new_hash, third);
        let relinked = [lines[0], &line, &rest].concat();
        let problem = Ledger::check(&relinked, &trusted).problem.unwrap();
        assert_eq!(problem.line, 2, "{problem:?}");
        assert!(problem.reason.contains("signature"), "{problem:?}");

        let untrusted = Ledger::check(&data, &["00".repeat(32)]).problem.unwrap();
        assert_eq!(untrusted.line, 1);
        assert!(untrusted.reason.contains("not trusted"), "{untrusted:?}");
    }

    #[test]
    fn a_half_written_last_line_is_cut_off_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (data, trusted) = three_lines(dir.path());
        std::fs::write(dir.path().join(FILE), &data[..data.len() - 10]).unwrap();
        let key = key(dir.path());
        let (mut ledger, known) = LedgerWriter::open(dir.path()).unwrap();
        assert!(known.contains("s2") && !known.contains("s3"));
        ledger
            .append(&key, Outcome::Sealed, "s3", 5, &"c".repeat(64))
            .unwrap();
        drop(ledger);
        let read = Ledger::read(dir.path(), &trusted).unwrap().unwrap();
        assert_eq!(read.problem, None);
        assert_eq!(read.entries.len(), 3);
    }

    #[test]
    fn a_damaged_ledger_stops_the_writer_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let (data, _) = three_lines(dir.path());
        let text = String::from_utf8(data)
            .unwrap()
            .replacen("{\"hash\"", "{\"hush\"", 2);
        std::fs::write(dir.path().join(FILE), text).unwrap();
        let Err(e) = LedgerWriter::open(dir.path()) else {
            panic!("opened a damaged ledger");
        };
        assert!(e.contains("line 1") && e.contains("move it aside"), "{e}");
    }
}
