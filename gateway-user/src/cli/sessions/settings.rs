//! Opening the [`Source`] the command line names: the configuration,
//! the trusted keys, and the ledger beside local recordings.

use std::collections::BTreeMap;

use super::{
    StoreArgs,
    source::{Database, Source, Store},
};
use crate::{
    policy::{Policy, RecordingSettings},
    recording::{
        keys,
        ledger::{self, Ledger, Problem},
    },
};

impl StoreArgs {
    pub(super) fn source(&self, settings: &RecordingSettings) -> Result<Source, String> {
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

    pub(super) fn settings(&self) -> Result<RecordingSettings, String> {
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

pub(super) fn public_key(settings: &RecordingSettings) -> Result<String, String> {
    keys::read_public(&keys::public_key_path(&settings.keys_dir))
}

/// A `--public-key`, normalised: a typo or the other case must not make
/// every recording silently "not trusted".
pub(super) fn given_key(text: &str) -> Result<String, String> {
    keys::parse_public(text.trim())
        .ok_or_else(|| format!("--public-key {text:?} is not a 64-hex-digit ed25519 public key"))
}

/// Whether this user may not read `path`. Opened without blocking: a FIFO
/// put there must not hang the check (found in review).
pub(super) fn denied(path: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}
