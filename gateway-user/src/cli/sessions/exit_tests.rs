//! Exit codes of `chokepoint sessions`, which scripts read: a tampered
//! recording (1) must not look like a command that could not check one (2).
use std::{path::Path, process::ExitCode};

use super::{SessionsCommand, StoreArgs, sessions};
use crate::{
    policy::RecordingSettings,
    recording::{Recorder, files, tests},
};

fn settings(dir: &Path) -> RecordingSettings {
    RecordingSettings {
        dir: dir.join("sessions"),
        keys_dir: dir.join("keys"),
        ..RecordingSettings::default()
    }
}

/// Records one sealed session under `dir`, as the daemon does; its id.
async fn recorded(dir: &Path) -> String {
    // Once the last recorder here let go of the ledger.
    let recorder = tests::restart(&settings(dir));
    let session = recorder.open(tests::start()).await;
    session.record(tests::statement("SELECT 1"));
    let id = session.id().to_owned();
    session.close(tests::end());
    recorder.shutdown().await;
    id
}

/// `sessions --dir <dir>/sessions --keys-dir <dir>/keys`: no configuration read.
pub(super) fn store(dir: &Path) -> StoreArgs {
    StoreArgs {
        config: dir.join("no-such-config.toml"),
        dir: Some(dir.join("sessions")),
        keys_dir: Some(dir.join("keys")),
        store: None,
        public_keys: Vec::new(),
    }
}

/// `verify --all`.
fn verify_all() -> SessionsCommand {
    SessionsCommand::Verify {
        id: None,
        all: true,
    }
}

fn verify(id: &str) -> SessionsCommand {
    SessionsCommand::Verify {
        id: Some(id.to_owned()),
        all: false,
    }
}

/// Found in review: arguments that do not apply were ignored.
#[tokio::test]
async fn arguments_that_do_not_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    recorded(dir.path()).await;
    // The key is there: alone, pubkey prints it.
    assert_eq!(
        sessions(&store(dir.path()), &SessionsCommand::Pubkey),
        ExitCode::SUCCESS
    );
    let with_key = StoreArgs {
        public_keys: vec!["00".repeat(32)],
        ..store(dir.path())
    };
    assert_eq!(
        sessions(&with_key, &SessionsCommand::Pubkey),
        ExitCode::from(2)
    );
    let with_store = StoreArgs {
        store: Some("host=127.0.0.1 dbname=none".into()),
        ..store(dir.path())
    };
    let why = super::conflict(&with_store, &verify("x")).unwrap_or_default();
    assert!(why.starts_with("--dir names local recordings"), "{why:?}");
    assert!(super::conflict(&store(dir.path()), &verify("x")).is_none());
}

#[tokio::test]
async fn what_cannot_be_checked_exits_2_and_only_tampering_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let id = recorded(dir.path()).await;
    let args = store(dir.path());
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::SUCCESS);

    // Bad arguments: nothing was checked, so nothing is "tampered".
    let unknown = "20991231T000000Z-000000000000";
    assert_eq!(sessions(&args, &verify(unknown)), ExitCode::from(2));
    assert_eq!(sessions(&args, &verify("../../etc")), ExitCode::from(2));
    let show = SessionsCommand::Show { id: unknown.into() };
    assert_eq!(sessions(&args, &show), ExitCode::from(2));
    let list = SessionsCommand::List {
        since: Some("last tuesday".into()),
        identity: None,
        target: None,
    };
    assert_eq!(sessions(&args, &list), ExitCode::from(2));
    let bad_key = StoreArgs {
        public_keys: vec!["not-a-key".into()],
        ..store(dir.path())
    };
    assert_eq!(sessions(&bad_key, &verify(&id)), ExitCode::from(2));
    let no_config = StoreArgs {
        dir: None,
        ..store(dir.path())
    };
    assert_eq!(sessions(&no_config, &verify(&id)), ExitCode::from(2));

    // A recording the host's ledger has seen sealed is not a bad
    // argument once deleted: it is tampered, as `verify --all` says too.
    let path = files::find(&dir.path().join("sessions"), &id).unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
    // So do show, replay and export: the recording is not unknown.
    for command in [
        SessionsCommand::Show { id: id.clone() },
        SessionsCommand::Replay {
            id: id.clone(),
            speed: 0.0,
        },
        SessionsCommand::Export {
            id: id.clone(),
            format: super::ExportFormat::Jsonl,
        },
    ] {
        assert_eq!(sessions(&args, &command), ExitCode::from(1), "{command:?}");
    }
    let all = verify_all();
    assert_eq!(sessions(&args, &all), ExitCode::from(1));
}

#[tokio::test]
async fn show_replay_export_and_list_print_a_tampered_recording_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let id = recorded(dir.path()).await;
    let args = store(dir.path());
    let show = SessionsCommand::Show { id: id.clone() };
    let replay = SessionsCommand::Replay {
        id: id.clone(),
        speed: 0.0,
    };
    let export = SessionsCommand::Export {
        id: id.clone(),
        format: super::ExportFormat::Json,
    };
    let list = |target: Option<&str>| SessionsCommand::List {
        since: None,
        identity: None,
        target: target.map(str::to_owned),
    };
    for command in [&show, &replay, &export, &list(None)] {
        assert_eq!(sessions(&args, command), ExitCode::SUCCESS, "{command:?}");
    }

    // One changed byte in the statement: what verify calls tampered.
    let path = files::find(&dir.path().join("sessions"), &id).unwrap();
    let mut data = std::fs::read(&path).unwrap();
    let at = data.windows(8).position(|w| w == b"SELECT 1").unwrap();
    data[at + 7] = b'2';
    std::fs::write(&path, data).unwrap();
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
    for command in [&show, &replay, &export, &list(None)] {
        assert_eq!(sessions(&args, command), ExitCode::from(1), "{command:?}");
    }
    // A row the filters hide is not listed, so it is not the list's verdict.
    assert_eq!(
        sessions(&args, &list(Some("no-such-target"))),
        ExitCode::SUCCESS
    );
}

#[tokio::test]
async fn jsonl_export_is_the_recording_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let id = recorded(dir.path()).await;
    let args = store(dir.path());
    let source = args.source(&args.settings().unwrap()).unwrap();
    let path = files::find(&dir.path().join("sessions"), &id).unwrap();
    let stored = std::fs::read(&path).unwrap();
    let (verdict, _, lines) = super::stored_lines(&source, &id).unwrap();
    assert!(
        matches!(verdict, super::Verdict::Sealed { .. }),
        "{verdict:?}"
    );
    assert_eq!(lines, stored);
    let export = SessionsCommand::Export {
        id: id.clone(),
        format: super::ExportFormat::Jsonl,
    };
    assert_eq!(sessions(&args, &export), ExitCode::SUCCESS);

    // A half line appended to a closed recording is the tampering: it
    // goes out with the rest, and the export exits 1.
    let mut cut = stored.clone();
    cut.extend_from_slice(b"{\"hash\":\"00");
    std::fs::write(&path, &cut).unwrap();
    let (verdict, _, lines) = super::stored_lines(&source, &id).unwrap();
    assert!(
        matches!(verdict, super::Verdict::Tampered { .. }),
        "{verdict:?}"
    );
    assert_eq!(lines, cut);
    assert_eq!(sessions(&args, &export), ExitCode::from(1));
}

/// The first `n` lines of `data`.
fn first_lines(data: &[u8], n: usize) -> Vec<u8> {
    data.split_inclusive(|&b| b == b'\n')
        .take(n)
        .flatten()
        .copied()
        .collect()
}

/// Found in review: the gateway stops mid-session after fsyncing 6
/// events (the head keeps that anchor), and the file is cut to 2 lines
/// before it starts again. Recovery rightly refused to seal it, but
/// `verify` said "unsealed" (exit 3) for ever. Now it is TAMPERED before
/// the restart (the head's anchor), and after it, and after the ledger
/// is compacted (the ledger's `damaged` line).
#[tokio::test]
async fn a_recording_cut_below_its_anchor_is_tampered_for_good() {
    use crate::recording::ledger;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = Recorder::start(&s).expect("recorder");
    let session = recorder.open(tests::start()).await;
    for i in 0..5 {
        session.record(tests::statement(&format!("SELECT {i}")));
    }
    let id = session.id().to_owned();
    recorder.flush().await;
    // The gateway stops (crash, restart): the session is never closed.
    drop(session);
    recorder.shutdown().await;
    drop(recorder);
    let head_path = ledger::head_path(&s.keys_dir, &s.dir);
    let head = ledger::read_head(&head_path).unwrap().unwrap();
    assert_eq!(head.open[&id].events, 6, "anchor at 6 fsynced events");
    let args = store(dir.path());
    let all = verify_all();
    // Intact, it is unsealed until the gateway starts again.
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(3));
    let path = files::find(&s.dir, &id).unwrap();
    let two = first_lines(&std::fs::read(&path).unwrap(), 2);
    std::fs::write(&path, &two).unwrap();
    let verdict = || {
        let source = args.source(&args.settings().unwrap()).unwrap();
        super::stored_lines(&source, &id).unwrap().0
    };
    match verdict() {
        super::Verdict::Tampered {
            line: 3, reason, ..
        } => assert!(
            reason.contains("cut below the 6 events the gateway fsynced"),
            "{reason}"
        ),
        other => panic!("not caught before the restart: {other:?}"),
    }
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
    assert_eq!(sessions(&args, &all), ExitCode::from(1));

    // The gateway starts again: it leaves the recording as it is and
    // lists it damaged, which the next head no longer needs to carry.
    let again = tests::restart(&s);
    again.shutdown().await;
    drop(again);
    assert_eq!(std::fs::read(&path).unwrap(), two, "recovery left it alone");
    let head = ledger::read_head(&head_path).unwrap().unwrap();
    assert!(!head.open.contains_key(&id), "{:?}", head.open);
    assert!(matches!(verdict(), super::Verdict::Tampered { .. }));
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
    assert_eq!(sessions(&args, &all), ExitCode::from(1));
    let list = SessionsCommand::List {
        since: None,
        identity: None,
        target: None,
    };
    assert_eq!(sessions(&args, &list), ExitCode::from(1));

    // A compaction restates each recording's newest line: the damaged one.
    let key = crate::recording::keys::HostKey::load_or_create(&s.keys_dir).unwrap();
    let mut writer = None;
    for _ in 0..250 {
        match ledger::LedgerWriter::open(&s.dir, &head_path, &key) {
            Ok((w, _)) => {
                writer = Some(w);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    writer.expect("the ledger").compact(&key).unwrap();
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
    assert_eq!(sessions(&args, &all), ExitCode::from(1));
}

/// Found in review: with the ledger removed (or a line of it damaged), a
/// sealed recording cut short read "unsealed" to `verify <id>` (exit 3,
/// a warning on stderr), and `list`, `show`, `replay` and `export` exited
/// 0. With the head in the keys directory vouching that a ledger exists,
/// each of them now says TAMPERED and exits 1.
#[tokio::test]
async fn a_deleted_or_damaged_ledger_makes_every_command_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let id = recorded(dir.path()).await;
    let intact = recorded(dir.path()).await;
    let args = store(dir.path());
    let sessions_dir = dir.path().join("sessions");
    let path = files::find(&sessions_dir, &id).unwrap();
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, first_lines(&data, 2)).unwrap();
    assert_eq!(
        sessions(&args, &verify(&id)),
        ExitCode::from(1),
        "caught by the ledger"
    );
    let ledger_path = sessions_dir.join("ledger.jsonl");
    let good_ledger = std::fs::read(&ledger_path).unwrap();
    let commands = |id: &str| {
        vec![
            verify(id),
            SessionsCommand::Show { id: id.to_owned() },
            SessionsCommand::Replay {
                id: id.to_owned(),
                speed: 0.0,
            },
            SessionsCommand::Export {
                id: id.to_owned(),
                format: super::ExportFormat::Json,
            },
            SessionsCommand::List {
                since: None,
                identity: None,
                target: None,
            },
            SessionsCommand::Verify {
                id: None,
                all: true,
            },
        ]
    };
    // A line of it changed: its signature no longer holds.
    let text = String::from_utf8(good_ledger.clone()).unwrap();
    let damaged = text.replacen("\"events\":0", "\"events\":1", 1);
    assert_ne!(damaged, text);
    for ledger in [None, Some(damaged.as_bytes())] {
        match ledger {
            None => std::fs::remove_file(&ledger_path).unwrap(),
            Some(bytes) => std::fs::write(&ledger_path, bytes).unwrap(),
        }
        // The cut recording and the intact one alike: the ledger that
        // would tell a cut from a crash, or a deletion, is not sound.
        for command in commands(&id).iter().chain(&commands(&intact)) {
            assert_eq!(sessions(&args, command), ExitCode::from(1), "{command:?}");
        }
        let source = args.source(&args.settings().unwrap()).unwrap();
        match super::stored_lines(&source, &id).unwrap().0 {
            super::Verdict::Tampered { reason, .. } => {
                assert!(reason.contains("host's ledger"), "{reason}")
            }
            other => panic!("a cut recording passed: {other:?}"),
        }
        // A recording deleted with the ledger cannot be told from an
        // unknown id; a malformed id is still a bad argument.
        std::fs::rename(&path, dir.path().join("aside")).unwrap();
        assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
        assert_eq!(sessions(&args, &verify("../../etc")), ExitCode::from(2));
        std::fs::rename(dir.path().join("aside"), &path).unwrap();
    }
    // Made unreadable (a directory in its place) is as good as damaged.
    std::fs::remove_file(&ledger_path).unwrap();
    std::fs::create_dir(&ledger_path).unwrap();
    assert_eq!(sessions(&args, &verify(&intact)), ExitCode::from(1));
    std::fs::remove_dir(&ledger_path).unwrap();
    std::fs::write(&ledger_path, &good_ledger).unwrap();
    assert_eq!(sessions(&args, &verify(&intact)), ExitCode::SUCCESS);
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
}

/// Found in review: recordings and the ledger were read whole with no
/// bound, so one made sparse and huge (no disk needed) made `list`,
/// `verify` and the daemon's start allocate without end. Now each is
/// refused by its size, before anything is read, naming the file.
#[tokio::test]
async fn a_sparse_huge_recording_or_ledger_is_refused_not_read() {
    use crate::recording::{files::MAX_RECORDING_BYTES, ledger};
    let dir = tempfile::tempdir().unwrap();
    let id = recorded(dir.path()).await;
    let args = store(dir.path());
    let sessions_dir = dir.path().join("sessions");
    let path = files::find(&sessions_dir, &id).unwrap();
    let grow = |path: &Path, len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    };
    grow(&path, 200 << 30);
    let source = args.source(&args.settings().unwrap()).unwrap();
    let e = super::stored_lines(&source, &id).unwrap_err();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("larger than"),
        "{e}"
    );
    // The ledger has it sealed: unreadable is tampered.
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));
    let list = SessionsCommand::List {
        since: None,
        identity: None,
        target: None,
    };
    assert_eq!(sessions(&args, &list), ExitCode::from(1));
    grow(&path, MAX_RECORDING_BYTES + 1);
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(1));

    // The ledger: the daemon refuses to start, naming it; verify says
    // TAMPERED.
    let ledger_path = sessions_dir.join(ledger::FILE);
    grow(&ledger_path, ledger::MAX_BYTES + 1);
    let mut started = Recorder::start(&settings(dir.path()));
    // Once the last recorder here let go of the ledger.
    for _ in 0..250 {
        match &started {
            Err(e) if e.contains("is locked") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                started = Recorder::start(&settings(dir.path()));
            }
            _ => break,
        }
    }
    let Err(e) = started else {
        panic!("the daemon started on a huge ledger");
    };
    assert!(
        e.contains(&ledger_path.display().to_string()) && e.contains("larger than"),
        "{e}"
    );
    assert_eq!(
        sessions(
            &args,
            &SessionsCommand::Verify {
                id: None,
                all: true
            }
        ),
        ExitCode::from(1)
    );
}

/// Found in review: a recording planted beside the gateway's, intact but
/// unsealed, read "unsealed" (exit 3) though the host's sound ledger
/// never listed it. A session that opened after the command read the
/// ledger is not planted: its entry is read again.
#[tokio::test]
async fn a_recording_the_ledger_never_listed_is_tampered_but_a_new_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let genuine = recorded(dir.path()).await;
    let args = store(dir.path());
    // Intact and unsealed, made by another gateway's recorder.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = tests::restart(&settings(elsewhere.path()));
    let session = other.open(tests::start()).await;
    session.record(tests::statement("DROP TABLE customers"));
    other.flush().await;
    let planted = session.id().to_owned();
    let from = files::find(&elsewhere.path().join("sessions"), &planted).unwrap();
    let to = dir.path().join("sessions").join(
        from.strip_prefix(elsewhere.path().join("sessions"))
            .unwrap(),
    );
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(&from, &to).unwrap();
    assert_eq!(sessions(&args, &verify(&planted)), ExitCode::from(1));
    let all = verify_all();
    assert_eq!(sessions(&args, &all), ExitCode::from(1));
    std::fs::remove_file(&to).unwrap();
    assert_eq!(sessions(&args, &verify(&genuine)), ExitCode::SUCCESS);

    // The ledger is read, then a session opens on this host.
    let source = args.source(&args.settings().unwrap()).unwrap();
    let recorder = tests::restart(&settings(dir.path()));
    let running = recorder.open(tests::start()).await;
    recorder.flush().await;
    match super::stored_lines(&source, running.id()).unwrap().0 {
        super::Verdict::Unsealed { .. } => {}
        other => panic!("a session opened since the ledger was read: {other:?}"),
    }
    drop(running);
    recorder.shutdown().await;
}

/// A running session's last line may be caught half-written: left out
/// while the ledger has the session open (read a line at a time, as
/// `verify` reads), and a cut once it is not.
#[tokio::test]
async fn a_running_sessions_half_written_last_line_is_left_out() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let genuine = recorded(dir.path()).await;
    let s = settings(dir.path());
    let recorder = tests::restart(&s);
    let running = recorder.open(tests::start()).await;
    running.record(tests::statement("SELECT 1"));
    recorder.flush().await;
    let id = running.id().to_owned();
    let half = |id: &str| {
        let path = files::find(&s.dir, id).unwrap();
        let line = std::fs::read(&path).unwrap()[..40].to_vec();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&line)
            .unwrap();
    };
    half(&id);
    let args = store(dir.path());
    let source = args.source(&args.settings().unwrap()).unwrap();
    assert_eq!(
        super::stored_lines(&source, &id).unwrap().0,
        super::Verdict::Unsealed { events: 2 }
    );
    let all = verify_all();
    assert_eq!(sessions(&args, &verify(&id)), ExitCode::from(3));
    assert_eq!(sessions(&args, &all), ExitCode::from(3));
    // A session that ended: the same half line is a cut.
    half(&genuine);
    match super::stored_lines(&source, &genuine).unwrap().0 {
        super::Verdict::Tampered {
            line: 5, reason, ..
        } => assert!(reason.contains("truncated"), "{reason}"),
        other => panic!("a cut recording passed: {other:?}"),
    }
    assert_eq!(sessions(&args, &verify(&genuine)), ExitCode::from(1));
    drop(running);
    recorder.shutdown().await;
}

thread_local! {
    /// Run by `verify --all` instead of waiting for files of sessions
    /// just opened.
    pub(super) static WHILE_WAITING: std::cell::Cell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::Cell::new(None) };
}

/// The writer lists a session as opened before it makes the file:
/// `verify --all` in between found the entry and no file, and called the
/// recording gone. It looks once more before it says so.
#[tokio::test]
async fn a_recording_made_just_after_its_opening_is_not_gone() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = tests::restart(&s);
    let running = recorder.open(tests::start()).await;
    recorder.flush().await;
    let path = files::find(&s.dir, running.id()).unwrap();
    let away = dir.path().join("away.jsonl");
    std::fs::rename(&path, &away).unwrap();
    let args = store(dir.path());
    let all = verify_all();
    // Still not there after the wait: gone.
    assert_eq!(sessions(&args, &all), ExitCode::from(1));
    // Made meanwhile: checked, unsealed as a running session is.
    let (from, to) = (away.clone(), path.clone());
    WHILE_WAITING.set(Some(Box::new(move || std::fs::rename(from, to).unwrap())));
    assert_eq!(sessions(&args, &all), ExitCode::from(3));
    assert!(WHILE_WAITING.take().is_none(), "verify --all did not wait");
    drop(running);
    recorder.shutdown().await;
}

/// Found in review: `verify --all` on a directory that is no recordings
/// directory (a mistyped --dir) passed as "all intact", exit 0.
#[test]
fn verify_all_of_a_directory_without_recordings_or_ledger_is_trouble() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sessions")).unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let args = StoreArgs {
        public_keys: vec!["00".repeat(32)],
        ..store(dir.path())
    };
    let all = verify_all();
    assert_eq!(sessions(&args, &all), ExitCode::from(2));
}

/// Found in review: a garbled ledger head beside a deleted ledger gave a
/// warning and exit 0. The gateway writes its head whole, so one that does
/// not parse was altered, and nothing vouches for the ledger any more.
#[tokio::test]
async fn a_garbled_head_beside_a_deleted_ledger_is_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let id = recorded(dir.path()).await;
    let s = settings(dir.path());
    let all = verify_all();
    assert_eq!(sessions(&store(dir.path()), &all), ExitCode::SUCCESS);
    std::fs::write(
        crate::recording::ledger::head_path(&s.keys_dir, &s.dir),
        "garbage",
    )
    .unwrap();
    std::fs::remove_file(s.dir.join(crate::recording::ledger::FILE)).unwrap();
    assert_eq!(sessions(&store(dir.path()), &all), ExitCode::from(1));
    assert_eq!(
        sessions(&store(dir.path()), &verify(&id)),
        ExitCode::from(1)
    );
}

/// Found in review: deleting a recording, the ledger and the head passed
/// `verify --all` as all intact; and a FIFO put in the ledger's place hung
/// the permission check. On the host (its key beside the head), both are
/// tampering.
#[tokio::test]
async fn an_erased_ledger_and_head_or_a_fifo_ledger_are_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let id = recorded(dir.path()).await;
    let s = settings(dir.path());
    let all = verify_all();
    let ledger_file = s.dir.join(crate::recording::ledger::FILE);
    std::fs::remove_file(&ledger_file).unwrap();
    nix::unistd::mkfifo(&ledger_file, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert_eq!(sessions(&store(dir.path()), &all), ExitCode::from(1));
    std::fs::remove_file(&ledger_file).unwrap();
    std::fs::remove_file(crate::recording::ledger::head_path(&s.keys_dir, &s.dir)).unwrap();
    std::fs::remove_file(files::find(&s.dir, &id).unwrap()).unwrap();
    assert_eq!(sessions(&store(dir.path()), &all), ExitCode::from(1));
}
