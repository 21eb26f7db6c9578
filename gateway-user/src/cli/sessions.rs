//! `chokepoint sessions`: list, show, replay, verify and export recordings.
use super::output::{say, tell};
use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{Subcommand, ValueEnum};

use super::escaped::Escaped;

use crate::{
    policy::{Policy, RecordingSettings},
    recording::{
        Body, Event, files, keys,
        ledger::{self, Anchor, Ledger, Outcome, Problem},
        recover,
        verify::{self, Summary, Verdict},
    },
};

/// Where recordings and the sealing key are.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Daemon configuration whose [recording] names the directories.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/chokepoint/chokepoint.toml"
    )]
    config: PathBuf,
    /// Recordings directory, instead of the configuration's.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Directory of the host's key (host.ed25519.pub), instead of the configuration's.
    #[arg(long, global = true)]
    keys_dir: Option<PathBuf>,
    /// Read recordings from this PostgreSQL fleet store (a connection
    /// string) instead of the local files.
    #[arg(long, global = true)]
    store: Option<String>,
    /// Trust seals by this public key (hex; repeat for a fleet) instead of
    /// this host's key.
    #[arg(long = "public-key", global = true)]
    public_keys: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// One line per recorded session, oldest first.
    List {
        /// Only sessions started within this long (e.g. 2h, 3days) or since
        /// this time (2026-11-27T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only sessions whose identity (uid, pid, process name) contains this.
        #[arg(long)]
        identity: Option<String>,
        /// Only sessions of this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Every event of a session as a table, then its verdict; exit 1 when
    /// the recording was altered.
    Show { id: String },
    /// The session as the job saw it: statements, results and errors, with
    /// the original timing divided by --speed (0.01 to 1000, or 0: no
    /// waiting); a pause over 10 s is cut short and noted. Exit 1 when the
    /// recording was altered.
    Replay {
        id: String,
        #[arg(long, default_value_t = 1.0, value_parser = parse_speed)]
        speed: f64,
    },
    /// Check hash chains and seals. Exit 0: all sealed and intact; 1: some
    /// recording (or the host's ledger) was altered; 2: nothing could be checked (bad arguments,
    /// unreadable files); 3: intact but unsealed (gateway stopped before
    /// the session ended).
    Verify {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// A session's events and verdict: `json`, one document of the events
    /// as this version reads them; `jsonl`, the recording's lines exactly
    /// as stored (hashes included, nothing this version does not know
    /// dropped), verdict on stderr. Exit 1 when the recording was altered.
    Export {
        id: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
    },
    /// The host's public sealing key (hex), for verifying elsewhere.
    Pubkey,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Json,
    Jsonl,
}

/// Exit code of a recording found altered (`verify`, and `show`,
/// `replay` and `export` after printing it, `list` after listing one).
const TAMPERED: u8 = 1;
/// Exit code when nothing could be checked: bad arguments, an unreadable
/// configuration, key or recording, an unreachable store. Not 1, which a
/// script must be able to read as "tampered", and 2 like other usage and
/// configuration errors.
const TROUBLE: u8 = 2;
/// Exit code of a recording intact but unsealed (`verify`).
const UNSEALED: u8 = 3;
/// How long `verify --all` gives a session the ledger has opened to have
/// its file made, before calling it gone: the writer makes it right after
/// listing it, so this is ample, and it is waited only when one is missing.
const OPENING: Duration = Duration::from_millis(200);

/// Arguments that do not apply to `command`. Found in review: they were
/// accepted and ignored, so the command answered about something other
/// than what was asked.
fn conflict(store: &StoreArgs, command: &SessionsCommand) -> Option<&'static str> {
    if store.store.is_some() && store.dir.is_some() {
        return Some(
            "--dir names local recordings, and --store reads them from PostgreSQL: give one of them",
        );
    }
    if matches!(command, SessionsCommand::Pubkey)
        && (store.store.is_some() || !store.public_keys.is_empty())
    {
        return Some(
            "pubkey prints this host's key (from --keys-dir or the configuration): --store and --public-key do not apply",
        );
    }
    None
}

/// Prints `chokepoint: <message>` and returns [`TROUBLE`].
fn trouble(message: impl std::fmt::Display) -> ExitCode {
    tell!("chokepoint: {message}");
    ExitCode::from(TROUBLE)
}

pub(super) fn sessions(store: &StoreArgs, command: &SessionsCommand) -> ExitCode {
    if let Some(why) = conflict(store, command) {
        return trouble(why);
    }
    let settings = match store.settings() {
        Ok(s) => s,
        Err(e) => return trouble(e),
    };
    if let SessionsCommand::Pubkey = command {
        return match public_key(&settings) {
            Ok(k) => {
                say!("{k}");
                ExitCode::SUCCESS
            }
            Err(e) => trouble(e),
        };
    }
    let source = match store.source(&settings) {
        Ok(s) => s,
        Err(e) => return trouble(e),
    };
    // The verdict on the recording shown, replayed or exported.
    let result = match command {
        SessionsCommand::List {
            since,
            identity,
            target,
        } => {
            return match list(
                &source,
                since.as_deref(),
                identity.as_deref(),
                target.as_deref(),
            ) {
                Ok(tampered) => {
                    let ledger = ledger_tampered(&source);
                    if ledger || tampered > 0 {
                        ExitCode::from(TAMPERED)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => trouble(e),
            };
        }
        SessionsCommand::Show { id } => show(&source, id).map(Some),
        SessionsCommand::Replay { id, speed } => replay(&source, id, *speed).map(Some),
        SessionsCommand::Verify { id, all } => return verify_cmd(&source, id.as_deref(), *all),
        SessionsCommand::Export { id, format } => export(&source, id, *format).map(Some),
        SessionsCommand::Pubkey => Ok(None),
    };
    let id = match command {
        SessionsCommand::Show { id }
        | SessionsCommand::Replay { id, .. }
        | SessionsCommand::Export { id, .. } => Some(id.as_str()),
        _ => None,
    };
    match result {
        // Everything was printed, the verdict with it; the code is for
        // scripts, which must not take an altered recording as evidence.
        // Nor one whose host's ledger was altered (said either way).
        Ok(verdict) => {
            let ledger = ledger_tampered(&source);
            if ledger || matches!(verdict, Some(Verdict::Tampered { .. })) {
                ExitCode::from(TAMPERED)
            } else {
                ExitCode::SUCCESS
            }
        }
        // A recording the host's ledger vouches for that cannot be read
        // is what `verify` calls it: tampered, not a bad argument.
        Err(e) => match id.and_then(|id| vouched(&source, id, &e)) {
            Some(line) => {
                say!("{line}");
                ExitCode::from(TAMPERED)
            }
            None => trouble(e),
        },
    }
}

/// Prints the ledger's problem on stderr when a head says there must be
/// a sound ledger; whether it did (the command then exits 1).
fn ledger_tampered(source: &Source) -> bool {
    ledger_tampered_to(source, std::io::stderr().lock())
}

/// [`ledger_tampered`], onto `err`. Escaped: found in review, the
/// problem's reason can quote the ledger file.
fn ledger_tampered_to(source: &Source, err: impl Write) -> bool {
    let Some(p) = source.ledger_problem() else {
        return false;
    };
    let _ = writeln!(Escaped(err), "{}", describe_ledger(p));
    true
}

fn describe_ledger(p: &Problem) -> String {
    format!(
        "ledger: TAMPERED at line {} (seq {}): {}; entries after it are not trusted",
        p.line, p.seq, p.reason
    )
}

/// Where recordings are read from, and which seals are trusted.
struct Source {
    store: Store,
    trusted: Vec<String>,
    /// The host's ledger beside local recordings (`None`: there is none,
    /// or recordings come from the fleet store).
    ledger: Option<Ledger>,
    /// Whether the keys directory holds the ledger's head: then a sound
    /// ledger is expected, and one that is not is evidence of tampering.
    headed: bool,
    /// Where the head says each recording the gateway has not sealed
    /// stood at its last fsync.
    anchors: BTreeMap<String, Anchor>,
    /// The recordings directory and the head's path, to read the ledger
    /// again ([`Source::newer_entry`]).
    ledger_at: Option<(PathBuf, PathBuf)>,
    /// The ledger as read again, once, after the recordings were.
    reread: std::cell::OnceCell<Option<Ledger>>,
}

enum Store {
    Files(PathBuf),
    Database(Box<Database>),
}

struct Database {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

/// A recording as listed: its id (from the file name, lossily for a name
/// that is not UTF-8) and, for local files, the file found.
struct Listed {
    id: String,
    path: Option<PathBuf>,
}

impl Source {
    /// The ledger's first bad line (or that it is gone), when a head says
    /// there must be a sound ledger. Found in review: per-id commands and
    /// `list` only warned, so a recording cut short read "unsealed" once
    /// the ledger that caught the cut was deleted.
    fn ledger_problem(&self) -> Option<&Problem> {
        self.ledger
            .as_ref()
            .and_then(|l| l.problem.as_ref())
            .filter(|_| self.headed)
    }

    /// Whether the ledger was read and checked against its head: then
    /// it has every recording of this gateway's.
    fn ledger_sound(&self) -> bool {
        self.headed && self.ledger.as_ref().is_some_and(|l| l.problem.is_none())
    }

    /// `session`'s entry in the ledger as it is now. The ledger was read
    /// before the recordings: a session opened since has a file this
    /// command found and an entry only a second read sees (the writer
    /// lists it before creating the file). Read once, after the files
    /// that need it, so it covers all of them.
    fn newer_entry(&self, session: &str) -> Option<&ledger::Entry> {
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
    fn ledger_now(&self) -> Option<Ledger> {
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
    fn file_of(&self, session: &str) -> Option<PathBuf> {
        match &self.store {
            Store::Files(dir) => files::find(dir, session).ok(),
            Store::Database(_) => None,
        }
    }

    /// Every recording, oldest first. Files are kept as found, so one
    /// misnamed or misplaced file is reported on its own row instead of
    /// being looked up again by a name that leads nowhere.
    fn all(&self) -> Result<Vec<Listed>, String> {
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

    /// A listed recording's verdict (and events, when `collect`); an
    /// error for a file that is not where its name says, or cannot be
    /// read.
    fn load_listed(&self, listed: &Listed, collect: bool) -> Result<Judged, String> {
        let (Store::Files(dir), Some(path)) = (&self.store, &listed.path) else {
            return self.load(&listed.id, collect);
        };
        if let Some(why) = files::misplaced(dir, path) {
            return Err(why);
        }
        self.judge_file(&listed.id, path, collect)
    }

    /// A recording's verdict (and events, when `collect`).
    fn load(&self, id: &str, collect: bool) -> Result<Judged, String> {
        match &self.store {
            Store::Files(dir) => self.judge_file(id, &files::find(dir, id)?, collect),
            Store::Database(_) => self
                .judge(id, &self.read(id)?[..], collect)
                .map_err(|e| e.to_string()),
        }
    }

    /// Reads the file a line at a time: `verify --all` over big
    /// recordings must not hold any of them whole.
    fn judge_file(
        &self,
        id: &str,
        path: &std::path::Path,
        collect: bool,
    ) -> Result<Judged, String> {
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let file = files::open(path).map_err(cannot)?;
        self.judge(id, file, collect).map_err(cannot)
    }

    /// A recording's bytes as stored.
    fn read(&self, id: &str) -> Result<Vec<u8>, String> {
        match &self.store {
            Store::Files(dir) => read_recording(&files::find(dir, id)?),
            Store::Database(db) => db
                .runtime
                .block_on(crate::recording::sink::recording(&db.client, id)),
        }
    }

    /// Verifies recording `id`, read from `reader`. A recording of
    /// another session under this id (a file copied over another) is
    /// tampered, whatever its own chain says.
    fn judge(&self, id: &str, reader: impl BufRead, collect: bool) -> std::io::Result<Judged> {
        // A session still running may be caught mid-write: its last line
        // is not a cut while the ledger has it open.
        let open = self.ledger.as_ref().is_some_and(|l| {
            let name = std::path::Path::new(id)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(id);
            l.entries
                .get(name)
                .is_some_and(|e| e.outcome == Outcome::Opened)
        });
        // A file named on the command line is expected to hold the
        // session its name says.
        let expected = match id.strip_suffix(".jsonl") {
            Some(path) => std::path::Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(path),
            None => id,
        };
        let sound = self.ledger_sound();
        let listed_as = |session: &str| {
            self.ledger
                .as_ref()
                .and_then(|l| l.entries.get(session))
                .or_else(|| sound.then(|| self.newer_entry(session)).flatten())
        };
        // Whatever the ledger says, a recording runs through where the
        // gateway last fsynced it (a prefix of anything it wrote later).
        // Known before reading, so the checker keeps that one line's
        // hash: by the expected session's entry, as one of any other
        // session is tampered below, whatever its anchor.
        let anchor = self
            .anchors
            .get(expected)
            .cloned()
            .or_else(|| listed_as(expected).and_then(ledger::Entry::anchor));
        let mut checker = verify::Checker::new(&self.trusted).watching(anchor.as_ref());
        if collect {
            checker = checker.collecting();
        }
        let torn = verify::feed(reader, &mut checker)?;
        let checked = checker.finish(if open { 0 } else { torn });
        let listed = checked.summary.session().and_then(listed_as);
        let verdict = match &anchor {
            Some(a) => checked.against_anchor(checked.verdict.clone(), a),
            None => checked.verdict.clone(),
        };
        let verdict = verify::against_ledger(verdict, &checked.summary, listed, sound);
        // Without a sound ledger, a seal missing tells nothing: the
        // recording may have been cut short.
        let verdict = match (verdict, self.ledger_problem()) {
            (Verdict::Unsealed { events: n }, Some(p)) => Verdict::Tampered {
                line: n as usize + 1,
                seq: Some(n),
                reason: format!(
                    "the chain is intact through seq {} but has no seal, and the host's ledger, which tells a cut from a crash, is TAMPERED at line {} (seq {}): {}",
                    n.saturating_sub(1),
                    p.line,
                    p.seq,
                    p.reason
                ),
            },
            (verdict, _) => verdict,
        };
        if let Some(session) = checked.summary.session()
            && session != expected
        {
            let reason = format!(
                "the recording is of session {session}, not {expected}: it was put in place of the original"
            );
            return Ok(Judged {
                verdict: Verdict::Tampered {
                    line: 1,
                    seq: Some(0),
                    reason,
                },
                found: Summary::default(),
                events: Vec::new(),
            });
        }
        Ok(Judged {
            verdict,
            found: checked.summary,
            events: checked.events,
        })
    }
}

/// A recording's verdict, what of its events tells it, and its events
/// when they were collected to print.
struct Judged {
    verdict: Verdict,
    found: Summary,
    events: Vec<Event>,
}

impl StoreArgs {
    fn source(&self, settings: &RecordingSettings) -> Result<Source, String> {
        let trusted = if self.public_keys.is_empty() {
            vec![public_key(settings)?]
        } else {
            self.public_keys
                .iter()
                .map(|k| given_key(k))
                .collect::<Result<_, _>>()?
        };
        let mut ledger = None;
        let mut headed = false;
        let mut anchors = BTreeMap::new();
        let mut ledger_at = None;
        let store = match &self.store {
            None => {
                // The head is in the keys directory; reading recordings
                // copied to another machine, there is none.
                let head_path = ledger::head_path(&settings.keys_dir, &settings.dir);
                // Files this user may not read say nothing of tampering
                // (found in review: they read as TAMPERED, exit 1).
                for path in [head_path.clone(), settings.dir.join(ledger::FILE)] {
                    if denied(&path) {
                        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
                        return Err(format!(
                            "cannot read {}: {e}: run as root, or as the gateway's user",
                            path.display()
                        ));
                    }
                }
                // The gateway writes its head whole (written, fsynced,
                // renamed): one that does not parse was altered, and
                // nothing then vouches for the ledger. Found in review: a
                // garbled head beside a deleted ledger passed with a
                // warning, exit 0.
                let (head, head_problem) = match ledger::read_head(&head_path) {
                    // Found in review: deleting a recording, the ledger
                    // and the head passed `verify --all` as all intact. On
                    // the host (its private key here) the gateway makes
                    // its ledger at every start, so with the head gone
                    // too it was removed. (A head alone may be missing: it
                    // is first written at the ledger's first fsync.)
                    Ok(None)
                        if crate::recording::keys::private_key_path(&settings.keys_dir)
                            .exists()
                            && !settings.dir.join(ledger::FILE).exists() =>
                    {
                        (
                            None,
                            Some(format!(
                                "the ledger {} and its head are gone, but this host's key is here",
                                settings.dir.join(ledger::FILE).display()
                            )),
                        )
                    }
                    Ok(head) => (head, None),
                    Err(e) => (None, Some(e)),
                };
                ledger = match Ledger::read(&settings.dir, &trusted, head.as_ref()) {
                    Ok(ledger) => ledger,
                    // A head vouches that a ledger is there to be read: one
                    // made unreadable (a directory, a FIFO) is a damaged one.
                    Err(e) if head.is_some() || head_problem.is_some() => Some(Ledger {
                        problem: Some(Problem {
                            line: 1,
                            seq: 0,
                            reason: e,
                        }),
                        ..Ledger::default()
                    }),
                    Err(e) => return Err(e),
                };
                if let Some(why) = head_problem {
                    headed = true;
                    let mut damaged = ledger.take().unwrap_or_default();
                    damaged.problem = Some(Problem {
                        line: 1,
                        seq: 0,
                        reason: format!(
                            "{why}: the ledger cannot be checked for being cut short or deleted"
                        ),
                    });
                    ledger = Some(damaged);
                }
                if let Some(head) = head {
                    headed = true;
                    anchors = head.open;
                    ledger_at = Some((
                        settings.dir.clone(),
                        ledger::head_path(&settings.keys_dir, &settings.dir),
                    ));
                }
                Store::Files(settings.dir.clone())
            }
            Some(conninfo) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let sink = crate::recording::sink::SinkSettings {
                    conninfo: conninfo.clone(),
                    password_file: None,
                };
                let client = runtime
                    .block_on(crate::recording::sink::connect(&sink))
                    .map_err(|e| format!("--store: {e}"))?;
                Store::Database(Box::new(Database { runtime, client }))
            }
        };
        Ok(Source {
            store,
            trusted,
            ledger,
            headed,
            anchors,
            ledger_at,
            reread: std::cell::OnceCell::new(),
        })
    }

    fn settings(&self) -> Result<RecordingSettings, String> {
        // Everything named on the command line: no configuration needed.
        let located = self.dir.is_some() || self.store.is_some();
        let keyed = self.keys_dir.is_some() || !self.public_keys.is_empty();
        let mut settings = if located && keyed {
            RecordingSettings::default()
        } else {
            Policy::load(&self.config)
                // Each error already names its file.
                .map_err(|e| {
                    format!(
                        "invalid configuration:\n{e}\n(or name the directories with --dir and --keys-dir)"
                    )
                })?
                .recording()
                .clone()
        };
        if let Some(dir) = &self.dir {
            settings.dir.clone_from(dir);
        }
        if let Some(dir) = &self.keys_dir {
            settings.keys_dir.clone_from(dir);
        }
        Ok(settings)
    }
}

fn read_recording(path: &std::path::Path) -> Result<Vec<u8>, String> {
    files::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn public_key(settings: &RecordingSettings) -> Result<String, String> {
    keys::read_public(&keys::public_key_path(&settings.keys_dir))
}

/// A `--public-key`, normalised: a typo or the other case must not make
/// every recording silently "not trusted".
fn given_key(text: &str) -> Result<String, String> {
    keys::parse_public(text.trim())
        .ok_or_else(|| format!("--public-key {text:?} is not a 64-hex-digit ed25519 public key"))
}

fn state(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Sealed { .. } => "sealed".into(),
        Verdict::Recovered { .. } => "recovered".into(),
        Verdict::Unsealed { .. } => "unsealed".into(),
        Verdict::Tampered { line, .. } => format!("TAMPERED@{line}"),
    }
}

/// Prints the recordings that pass the filters; how many of the rows
/// printed say TAMPERED.
fn list(
    source: &Source,
    since: Option<&str>,
    identity: Option<&str>,
    target: Option<&str>,
) -> Result<usize, String> {
    let cutoff = since.map(parse_since).transpose()?;
    let listed = source.all()?;
    let mut out = Escaped(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "{:<31} {:<27} {:<28} {:<14} {:<22} {:>5} STATE",
        "SESSION", "STARTED", "IDENTITY", "TARGET", "DESTINATION", "STMTS"
    );
    let mut unreadable = 0;
    let mut tampered = 0;
    for entry in &listed {
        let id = &entry.id;
        // One stray file must not hide the rest: its row says what is wrong.
        let Judged { verdict, found, .. } = match source.load_listed(entry, false) {
            Ok(loaded) => loaded,
            Err(e) => {
                unreadable += 1;
                let _ = writeln!(out, "{id:<31} {:<27} TAMPERED: {e}", "?");
                continue;
            }
        };
        let is_tampered = matches!(verdict, Verdict::Tampered { .. });
        let Some(first) = &found.first else {
            tampered += usize::from(is_tampered);
            let _ = writeln!(out, "{id:<31} {:<27} {}", "?", state(&verdict));
            continue;
        };
        let Body::SessionStart {
            identity: who,
            dst,
            target: session_target,
            ..
        } = &first.body
        else {
            continue;
        };
        if let Some(cutoff) = cutoff
            && humantime::parse_rfc3339(&first.wall).is_ok_and(|t| t < cutoff)
        {
            continue;
        }
        let who = format!("uid={} {}[{}]", who.uid, who.comm, who.pid);
        if identity.is_some_and(|i| !who.contains(i)) {
            continue;
        }
        let session_target = session_target.as_deref().unwrap_or("-");
        if target.is_some_and(|t| t != session_target) {
            continue;
        }
        let statements = found.statements;
        let _ = writeln!(
            out,
            "{:<31} {:<27} {:<28} {:<14} {:<22} {:>5} {}",
            first.session,
            first.wall,
            who,
            session_target,
            dst,
            statements,
            state(&verdict)
        );
        tampered += usize::from(is_tampered);
    }
    if unreadable > 0 {
        tell!(
            "warning: {unreadable} recording(s) could not be listed; `chokepoint sessions verify --all` reports them too"
        );
    }
    Ok(unreadable + tampered)
}

fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("--since {text} reaches before 1970"));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "--since {text:?} is neither a duration (2h, 3days) nor a time (2026-11-27T10:00:00Z)"
        )
    })
}

fn show(source: &Source, id: &str) -> Result<Verdict, String> {
    let Judged {
        verdict,
        found,
        events,
    } = source.load(id, true)?;
    let mut out = Escaped(std::io::stdout().lock());
    let _ = writeln!(out, "{:>4} {:>12} {:<14} DETAILS", "SEQ", "+MS", "TYPE");
    for e in &events {
        let _ = writeln!(
            out,
            "{:>4} {:>12.3} {:<14} {}",
            e.seq,
            e.mono_us as f64 / 1000.0,
            e.body.kind(),
            details(&e.body)
        );
    }
    let _ = writeln!(out, "-- {}", describe(&verdict, &found));
    Ok(verdict)
}

fn details(body: &Body) -> String {
    match body {
        Body::SessionStart {
            identity,
            dst,
            protocol,
            target,
            decision,
            rule,
            mode,
        } => format!(
            "uid={} gid={} pid={} comm={} cgroup={} dst={dst} protocol={protocol} target={} decision={decision} rule={rule} mode={mode}",
            identity.uid,
            identity.gid,
            identity.pid,
            identity.comm,
            identity.cgroup_id,
            target.as_deref().unwrap_or("-")
        ),
        Body::Login {
            role,
            database,
            upstream,
        } => format!("role={role} database={database} upstream={upstream}"),
        Body::Statement {
            text,
            class,
            decision,
            rule,
            reason,
        } => {
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            };
            format!("{decision} by {rule} [{class}]{why}: {text}")
        }
        Body::Result {
            text,
            rows,
            duration_us,
            error,
            masked,
            ..
        } => {
            let mut s = format!("rows={rows} {:.3} ms", *duration_us as f64 / 1000.0);
            if *masked {
                s.push_str(" masked");
            }
            if let Some(e) = error {
                s.push_str(&format!(" error={e}"));
            }
            if let Some(t) = text {
                s.push_str(&format!(": {t}"));
            }
            s
        }
        Body::SessionEnd {
            bytes_up,
            bytes_down,
            statements,
            denied,
            error,
        } => format!(
            "up={bytes_up}B down={bytes_down}B statements={statements} denied={denied}{}",
            error
                .as_deref()
                .map(|e| format!(" error={e}"))
                .unwrap_or_default()
        ),
        Body::Approval {
            id,
            event,
            by,
            detail,
        } => format!(
            "{id} {event}{}: {detail}",
            by.as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default()
        ),
        Body::Dns {
            name,
            qtype,
            decision,
            rule,
            answer,
            addresses,
        } => format!(
            "{decision} by {rule}: {name} {qtype} → {answer}{}",
            if addresses.is_empty() {
                String::new()
            } else {
                format!(" [{}]", addresses.join(", "))
            }
        ),
        Body::Seal {
            final_hash,
            recovered: None,
            ..
        } => format!("final hash {final_hash}"),
        Body::Seal {
            final_hash,
            recovered: Some(why),
            ..
        } => format!("final hash {final_hash} ({why})"),
    }
}

/// The verdict in words; `found`, what it was reached on. A seal
/// names the key that made it: with a fleet's keys trusted, any of them
/// verifies, and which host sealed a session is for the reader to hold
/// against the host it claims (found in review).
fn describe(verdict: &Verdict, found: &Summary) -> String {
    let by = sealer(found)
        .map(|key| format!(" by key {}…", key.get(..16).unwrap_or(key)))
        .unwrap_or_default();
    match verdict {
        Verdict::Sealed { events: n } => format!("verified: {n} events, sealed{by}"),
        Verdict::Recovered { events: n } => format!(
            "verified: {n} events, sealed when the gateway started again (it stopped before the session ended){}{}",
            as_found(found)
                .map(|why| format!("; {why}"))
                .unwrap_or_default(),
            if by.is_empty() {
                String::new()
            } else {
                format!(";{by}")
            }
        ),
        Verdict::Unsealed { events } => format!(
            "unsealed: the chain is intact through seq {}, but the gateway stopped before the session ended",
            events.saturating_sub(1)
        ),
        Verdict::Tampered { line, seq, reason } => format!(
            "TAMPERED at line {line}{}: {reason}",
            seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
        ),
    }
}

/// The public key (hex) of the seal that ends the events found, if one does.
fn sealer(found: &Summary) -> Option<&str> {
    found.seal.as_ref().map(|s| s.public_key.as_str())
}

/// What a recovered seal says of events it signed that the gateway had
/// not fsynced (so nothing but the seal vouches that the gateway wrote
/// them), when it says so: the part of its reason after [`recover::REASON`].
fn as_found(found: &Summary) -> Option<&str> {
    let why = found.seal.as_ref()?.recovered.as_deref()?;
    if !why.contains(recover::AS_FOUND) {
        return None;
    }
    let rest = why.strip_prefix(recover::REASON).unwrap_or(why);
    Some(rest.trim_start_matches("; "))
}

/// Slowest and fastest replay: slower would wait for ages on every pause
/// (and tiny speeds overflow a Duration), faster is the same as 0.
const MIN_SPEED: f64 = 0.01;
const MAX_SPEED: f64 = 1000.0;
/// Longest wait between two replayed events; a longer recorded gap (an idle
/// session, or a recording with a corrupt clock) is shown as a note.
const MAX_PAUSE: Duration = Duration::from_secs(10);

fn parse_speed(text: &str) -> Result<f64, String> {
    let speed: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if speed == 0.0 || (MIN_SPEED..=MAX_SPEED).contains(&speed) {
        Ok(speed)
    } else {
        Err(format!(
            "must be 0 (no waiting) or {MIN_SPEED} to {MAX_SPEED}, not {text}"
        ))
    }
}

/// How long to wait for a recorded gap of `gap_us` at `speed`, and whether
/// that was cut to [`MAX_PAUSE`].
fn pause(gap_us: u64, speed: f64) -> (Duration, bool) {
    if speed == 0.0 || gap_us == 0 {
        return (Duration::ZERO, false);
    }
    match Duration::try_from_secs_f64(gap_us as f64 / 1e6 / speed) {
        Ok(d) if d <= MAX_PAUSE => (d, false),
        _ => (MAX_PAUSE, true),
    }
}

fn replay(source: &Source, id: &str, speed: f64) -> Result<Verdict, String> {
    let Judged {
        verdict,
        found,
        events,
    } = source.load(id, true)?;
    let mut out = Escaped(std::io::stdout().lock());
    let mut last_us = 0;
    let mut prompt = "=>".to_owned();
    for e in &events {
        let gap_us = e.mono_us.saturating_sub(last_us);
        let (wait, cut) = pause(gap_us, speed);
        if !wait.is_zero() {
            let _ = out.flush();
            std::thread::sleep(wait);
        }
        if cut {
            let _ = writeln!(out, "-- … ({} s later)", gap_us / 1_000_000);
        }
        last_us = e.mono_us;
        let _ = match &e.body {
            Body::SessionStart {
                identity,
                dst,
                target,
                decision,
                ..
            } => writeln!(
                out,
                "-- {} {}[{}] uid={} → {dst} ({}) {decision}",
                e.wall,
                identity.comm,
                identity.pid,
                identity.uid,
                target.as_deref().unwrap_or("no target")
            ),
            Body::Login { role, database, .. } => {
                prompt = format!("{database}=>");
                writeln!(out, "-- logged in as {role} to {database}")
            }
            Body::Statement {
                text,
                decision,
                rule,
                reason,
                ..
            } => {
                let _ = writeln!(out, "{prompt} {text}");
                if decision == "allow" {
                    Ok(())
                } else if decision == "approve" {
                    writeln!(out, "-- held for approval by rule {rule}: {reason}")
                } else {
                    writeln!(
                        out,
                        "ERROR:  chokepoint: {decision} by rule {rule}: {reason}"
                    )
                }
            }
            Body::Result {
                text,
                rows,
                error,
                columns,
                sample,
                ..
            } => {
                if let Some(t) = text {
                    let _ = writeln!(out, "=> (execute) {t}");
                }
                print_result(&mut out, columns, &sample.rows(), *rows, error.as_deref())
            }
            Body::Approval {
                id,
                event,
                by,
                detail,
            } => writeln!(
                out,
                "-- approval {id} {event}{}: {detail}",
                by.as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default()
            ),
            Body::Dns {
                name,
                qtype,
                answer,
                addresses,
                ..
            } => writeln!(
                out,
                "-- dns {name} {qtype} → {answer} {}",
                addresses.join(", ")
            ),
            Body::SessionEnd { .. } => writeln!(out, "-- session ended"),
            Body::Seal { .. } => Ok(()),
        };
    }
    let _ = writeln!(out, "-- {}", describe(&verdict, &found));
    Ok(verdict)
}

fn print_result(
    out: &mut impl Write,
    columns: &[String],
    sample: &[Vec<Option<String>>],
    rows: u64,
    error: Option<&str>,
) -> std::io::Result<()> {
    if let Some(e) = error {
        return writeln!(out, "ERROR:  {e}");
    }
    if !columns.is_empty() {
        let cells = |row: &[Option<String>]| -> Vec<String> {
            row.iter()
                .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
                .collect()
        };
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for row in sample {
            for (i, v) in cells(row).iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(v.chars().count());
                }
            }
        }
        let line = |values: &[String]| -> String {
            values
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!(" {v:<w$} "))
                .collect::<Vec<_>>()
                .join("|")
        };
        writeln!(out, "{}", line(columns))?;
        writeln!(
            out,
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        )?;
        for row in sample {
            writeln!(out, "{}", line(&cells(row)))?;
        }
        if (sample.len() as u64) < rows {
            writeln!(
                out,
                "… {} more rows not recorded",
                rows - sample.len() as u64
            )?;
        }
    }
    writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" })
}

fn verify_cmd(source: &Source, id: Option<&str>, all: bool) -> ExitCode {
    // Session ids, file names and reasons come from files anyone with
    // write access to the folder could have forged.
    let mut out = Escaped(std::io::stdout().lock());
    let mut listed = if all {
        match source.all() {
            Ok(listed) => listed,
            Err(e) => return trouble(e),
        }
    } else {
        vec![Listed {
            id: id.unwrap_or_default().to_owned(),
            path: None,
        }]
    };
    // Neither a recording nor the ledger every gateway makes at its first
    // start: not a recordings directory (a mistyped --dir passed as
    // "all intact", found in review).
    if all
        && listed.is_empty()
        && source.ledger.is_none()
        && !source.headed
        && let Store::Files(dir) = &source.store
    {
        return trouble(format!(
            "{} holds no recordings and no ledger: name the recordings directory with --dir, or [recording] dir",
            dir.display()
        ));
    }
    let (mut tampered, mut unsealed, mut unreadable) = (0, 0, 0);
    if all && let Some(ledger) = &source.ledger {
        if let Some(p) = &ledger.problem {
            tampered += 1;
            let _ = writeln!(out, "{}", describe_ledger(p));
        }
        // What the ledger has sealed must still be there, unless
        // retention removed it (the ledger says so too).
        let present: std::collections::HashSet<&str> =
            listed.iter().map(|l| l.id.as_str()).collect();
        let mut missing: Vec<_> = ledger
            .entries
            .values()
            .filter(|e| e.outcome != Outcome::Removed && !present.contains(e.session.as_str()))
            .collect();
        missing.sort_by(|a, b| a.session.cmp(&b.session));
        // The writer lists a recording before it creates the file: a
        // session opening meanwhile has none yet. Looked for once more.
        if missing.iter().any(|e| e.outcome == Outcome::Opened) {
            wait_for_openings();
            let now = source.ledger_now();
            missing.retain(|e| {
                if e.outcome != Outcome::Opened {
                    return true;
                }
                if let Some(path) = source.file_of(&e.session) {
                    listed.push(Listed {
                        id: e.session.clone(),
                        path: Some(path),
                    });
                    return false;
                }
                // Its file could not be made: the writer listed it removed.
                now.as_ref()
                    .and_then(|l| l.entries.get(&e.session))
                    .is_none_or(|e| e.outcome != Outcome::Removed)
            });
        }
        for e in missing {
            tampered += 1;
            let _ = writeln!(
                out,
                "{}: TAMPERED: the host's ledger has it {} with {} events (ledger seq {}), but the recording is gone",
                e.session,
                e.outcome.as_str(),
                e.events,
                e.seq
            );
        }
    }
    if !all && let Some(p) = source.ledger_problem() {
        tampered += 1;
        let _ = writeln!(out, "{}", describe_ledger(p));
    } else if !all && let Some(p) = source.ledger.as_ref().and_then(|l| l.problem.as_ref()) {
        // No head vouches for it (a copy on another machine): nothing
        // says this ledger is the host's.
        let _ = writeln!(
            Escaped(std::io::stderr().lock()),
            "warning: the ledger is TAMPERED at line {} (seq {}): {}; run `chokepoint sessions verify --all`",
            p.line,
            p.seq,
            p.reason
        );
    }
    for entry in &listed {
        let id = &entry.id;
        match source.load_listed(entry, false) {
            Ok(Judged { verdict, found, .. }) => {
                match verdict {
                    Verdict::Sealed { .. } | Verdict::Recovered { .. } => {}
                    Verdict::Unsealed { .. } => unsealed += 1,
                    Verdict::Tampered { .. } => tampered += 1,
                }
                let _ = writeln!(out, "{id}: {}", describe(&verdict, &found));
            }
            // A file this user may not read: no verdict, and no evidence
            // either (exit 2, unless another recording is tampered).
            Err(e) if all && entry.path.as_deref().is_some_and(denied) => {
                unreadable += 1;
                let _ = writeln!(
                    out,
                    "{id}: not verified: {e}: run as root, or as the gateway's user"
                );
            }
            // One unreadable or misplaced file must not hide the verdicts
            // of the rest; it counts as tampered.
            Err(e) if all => {
                tampered += 1;
                let _ = writeln!(out, "{id}: TAMPERED: cannot be verified: {e}");
            }
            // Not found is a bad argument, unless the ledger vouches that
            // the recording existed.
            Err(e) => match vouched(source, id, &e) {
                Some(line) => {
                    tampered += 1;
                    let _ = writeln!(out, "{line}");
                }
                None => return trouble(e),
            },
        }
    }
    if tampered > 0 {
        ExitCode::from(TAMPERED)
    } else if unreadable > 0 {
        ExitCode::from(TROUBLE)
    } else if unsealed > 0 {
        ExitCode::from(UNSEALED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether this user may not read `path`. Opened without blocking: a FIFO
/// put there must not hang the check (found in review).
fn denied(path: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Gives sessions just listed [`OPENING`] to have their files made; a
/// test makes one meanwhile instead, so it need not race the wait.
fn wait_for_openings() {
    #[cfg(test)]
    if let Some(make) = exit_tests::WHILE_WAITING.take() {
        make();
        return;
    }
    std::thread::sleep(OPENING);
}

/// The verdict on recording `id`, which could not be loaded (`error`),
/// when the host's ledger has it (opened or sealed, not removed by
/// retention): it was deleted or made unreadable, so it is tampered.
fn vouched(source: &Source, id: &str, error: &str) -> Option<String> {
    // A ledger that is not sound cannot say the recording never existed.
    if let Some(p) = source.ledger_problem()
        && files::is_id(id)
        && source
            .ledger
            .as_ref()
            .is_none_or(|l| !l.entries.contains_key(id))
    {
        return Some(format!(
            "{id}: TAMPERED: {error}; the host's ledger, which would say whether the gateway recorded it, is TAMPERED at line {} (seq {})",
            p.line, p.seq
        ));
    }
    let known = source.ledger.as_ref()?.entries.get(id)?;
    if known.outcome == Outcome::Removed {
        return None;
    }
    let gone = match &source.store {
        Store::Files(dir) => files::find(dir, id).is_err(),
        Store::Database(_) => false,
    };
    let why = if gone {
        "the recording is gone".to_owned()
    } else {
        format!("it cannot be verified: {error}")
    };
    Some(format!(
        "{id}: TAMPERED: the host's ledger has it {} with {} events (ledger seq {}), but {why}",
        known.outcome.as_str(),
        known.events,
        known.seq
    ))
}

fn export(source: &Source, id: &str, format: ExportFormat) -> Result<Verdict, String> {
    match format {
        ExportFormat::Json => export_document(source, id),
        ExportFormat::Jsonl => export_lines(source, id),
    }
}

fn export_document(source: &Source, id: &str) -> Result<Verdict, String> {
    let Judged {
        verdict,
        found,
        events,
    } = source.load(id, true)?;
    let doc = serde_json::json!({
        "session": events.first().map(|e| e.session.clone()),
        "verdict": describe(&verdict, &found),
        "events": events,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    say!("{text}");
    Ok(verdict)
}

/// The recording's lines as stored: the exact bytes the chain hashed, so
/// anyone can check them again without chokepoint (`hash` is SHA-256 of
/// `prev_hash`, a newline and the event's bytes), and fields a newer
/// gateway wrote survive an older reader.
fn export_lines(source: &Source, id: &str) -> Result<Verdict, String> {
    export_lines_to(
        source,
        id,
        std::io::stdout().lock(),
        std::io::stderr().lock(),
    )
}

/// [`export_lines`], onto `out` and `err`. The verdict goes through
/// [`Escaped`] (the lines do not: they are the evidence, byte for byte):
/// found in review, a tampered verdict's reason can quote the file.
fn export_lines_to(
    source: &Source,
    id: &str,
    mut out: impl Write,
    err: impl Write,
) -> Result<Verdict, String> {
    let (verdict, found, lines) = stored_lines(source, id)?;
    // Kept for the exit code, as every other output (quiet on a closed
    // pipe); the verdict still goes to stderr.
    if let Err(e) = out.write_all(&lines).and_then(|()| out.flush()) {
        super::output::record(&e);
    }
    let _ = writeln!(Escaped(err), "-- {}", describe(&verdict, &found));
    Ok(verdict)
}

/// What `export --format jsonl` prints, the verdict on it and what it
/// was reached on.
fn stored_lines(source: &Source, id: &str) -> Result<(Verdict, Summary, Vec<u8>), String> {
    let mut data = source.read(id)?;
    let Judged { verdict, found, .. } = source
        .judge(id, &data[..], false)
        .map_err(|e| e.to_string())?;
    // A running session's last line may be half-written: left out, as
    // verify leaves it out. A cut line of any other is the evidence of
    // tampering and goes out with the rest.
    if !matches!(verdict, Verdict::Tampered { .. }) {
        data.truncate(data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
    }
    Ok((verdict, found, data))
}

#[cfg(test)]
mod exit_tests;

#[cfg(test)]
mod output_tests;

#[cfg(test)]
mod replay_tests {
    use std::time::Duration;

    use super::{MAX_PAUSE, parse_speed, pause};

    #[test]
    fn speeds_too_small_or_large_to_wait_by_are_refused() {
        for bad in [
            "1e-300", "5e-324", "1e-7", "0.001", "-1", "1e9", "inf", "NaN", "fast",
        ] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
        for (text, speed) in [
            ("0", 0.0),
            ("0.01", 0.01),
            ("1", 1.0),
            ("4", 4.0),
            ("1000", 1000.0),
        ] {
            assert_eq!(parse_speed(text), Ok(speed));
        }
    }

    #[test]
    fn long_gaps_wait_at_most_the_cap() {
        assert_eq!(pause(2_000_000, 4.0), (Duration::from_millis(500), false));
        assert_eq!(pause(u64::MAX, 0.01), (MAX_PAUSE, true));
        assert_eq!(pause(3_600_000_000, 1.0), (MAX_PAUSE, true));
        assert_eq!(pause(u64::MAX, 0.0), (Duration::ZERO, false));
    }
}
