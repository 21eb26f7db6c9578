//! Where recordings are read from (local files or the fleet store), and
//! what the host's ledger says of them.

use std::{collections::BTreeMap, path::PathBuf};

use crate::recording::{
    files,
    ledger::{self, Anchor, Ledger, Problem},
};

/// Where recordings are read from, and which seals are trusted.
pub(super) struct Source {
    pub(super) store: Store,
    pub(super) trusted: Vec<String>,
    /// The host's ledger beside local recordings (`None`: there is none,
    /// or recordings come from the fleet store).
    pub(super) ledger: Option<Ledger>,
    /// Whether the keys directory holds the ledger's head: then a sound
    /// ledger is expected, and one that is not is evidence of tampering.
    pub(super) headed: bool,
    /// Where the head says each recording the gateway has not sealed
    /// stood at its last fsync.
    pub(super) anchors: BTreeMap<String, Anchor>,
    /// The recordings directory and the head's path, to read the ledger
    /// again ([`Source::newer_entry`]).
    pub(super) ledger_at: Option<(PathBuf, PathBuf)>,
    /// The ledger as read again, once, after the recordings were.
    pub(super) reread: std::cell::OnceCell<Option<Ledger>>,
}

pub(super) enum Store {
    Files(PathBuf),
    Database(Box<Database>),
}

pub(super) struct Database {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) client: tokio_postgres::Client,
}

/// A recording as listed: its id (from the file name, lossily for a name
/// that is not UTF-8) and, for local files, the file found.
pub(super) struct Listed {
    pub(super) id: String,
    pub(super) path: Option<PathBuf>,
}

impl Source {
    /// The ledger's first bad line (or that it is gone), when a head says
    /// there must be a sound ledger. Found in review: per-id commands and
    /// `list` only warned, so a recording cut short read "unsealed" once
    /// the ledger that caught the cut was deleted.
    pub(super) fn ledger_problem(&self) -> Option<&Problem> {
        self.ledger
            .as_ref()
            .and_then(|l| l.problem.as_ref())
            .filter(|_| self.headed)
    }

    /// Whether the ledger was read and checked against its head: then
    /// it has every recording of this gateway's.
    pub(super) fn ledger_sound(&self) -> bool {
        self.headed && self.ledger.as_ref().is_some_and(|l| l.problem.is_none())
    }

    /// `session`'s entry in the ledger as it is now. The ledger was read
    /// before the recordings: a session opened since has a file this
    /// command found and an entry only a second read sees (the writer
    /// lists it before creating the file). Read once, after the files
    /// that need it, so it covers all of them.
    pub(super) fn newer_entry(&self, session: &str) -> Option<&ledger::Entry> {
        self.reread
            .get_or_init(|| {
                let (dir, head) = self.ledger_at.as_ref()?;
                let head = ledger::read_head(head).ok()??;
                Ledger::read(dir, &self.trusted, Some(&head))
                    .ok()?
                    .filter(|l| l.problem.is_none())
            })
            .as_ref()?
            .entries
            .get(session)
    }

    /// The ledger as it is now, read again (`None`: none, unreadable, or
    /// recordings come from the fleet store).
    pub(super) fn ledger_now(&self) -> Option<Ledger> {
        let Store::Files(dir) = &self.store else {
            return None;
        };
        let head = match &self.ledger_at {
            Some((_, head)) => ledger::read_head(head).ok()?,
            None => None,
        };
        Ledger::read(dir, &self.trusted, head.as_ref()).ok()?
    }

    /// The file of recording `session`, if there is one now.
    pub(super) fn file_of(&self, session: &str) -> Option<PathBuf> {
        match &self.store {
            Store::Files(dir) => files::find(dir, session).ok(),
            Store::Database(_) => None,
        }
    }

    /// Every recording, oldest first. Files are kept as found, so one
    /// misnamed or misplaced file is reported on its own row instead of
    /// being looked up again by a name that leads nowhere.
    pub(super) fn all(&self) -> Result<Vec<Listed>, String> {
        match &self.store {
            // The error names the path it failed at.
            Store::Files(dir) => Ok(files::all(dir)
                .map_err(|e| format!("cannot list the recordings: {e}"))?
                .into_iter()
                .map(|path| Listed {
                    id: path
                        .file_stem()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
                    path: Some(path),
                })
                .collect()),
            Store::Database(db) => Ok(db
                .runtime
                .block_on(crate::recording::sink::sessions(&db.client))?
                .into_iter()
                .map(|id| Listed { id, path: None })
                .collect()),
        }
    }
}
