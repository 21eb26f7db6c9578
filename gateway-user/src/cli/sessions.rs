//! `chokepoint sessions`: list, show, replay, verify and export recordings.
//! One file per command; where recordings come from is `source`,
//! `settings` and `judge`, and the words of a verdict `verdict`.
use super::output::{say, tell};
use std::{path::PathBuf, process::ExitCode};

use clap::{Subcommand, ValueEnum};

#[cfg(test)]
use crate::recording::verify::Summary;
use crate::recording::verify::Verdict;

mod export;
mod judge;
mod list;
mod replay;
mod rows;
mod settings;
mod show;
mod source;
mod verdict;
mod verify;

use export::export;
#[cfg(test)]
use export::{export_lines_to, stored_lines};
use list::list;
use replay::{parse_speed, replay};
use settings::public_key;
use show::show;
use verdict::ledger_tampered;
#[cfg(test)]
use verdict::{describe, ledger_tampered_to};
use verify::{verify_cmd, vouched};

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
    /// the recording was altered. Printed as read, so events before a
    /// problem found at the end are shown before the verdict that says it.
    Show { id: String },
    /// The session as the job saw it: statements, results and errors, with
    /// the original timing divided by --speed (0.01 to 1000, or 0: no
    /// waiting); a pause over 10 s is cut short and noted. Exit 1 when the
    /// recording was altered (said after the events read before it).
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
    /// dropped), verdict on stderr. Written as read, the verdict last;
    /// exit 1 when the recording was altered.
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
            // Not after a JSON document: its stdout stays one document.
            Some(line)
                if matches!(
                    command,
                    SessionsCommand::Export {
                        format: ExportFormat::Json,
                        ..
                    }
                ) =>
            {
                tell!("{line}");
                ExitCode::from(TAMPERED)
            }
            Some(line) => {
                say!("{line}");
                ExitCode::from(TAMPERED)
            }
            None => trouble(e),
        },
    }
}

#[cfg(test)]
mod exit_tests;

#[cfg(test)]
mod output_tests;

#[cfg(test)]
mod stream_tests;
