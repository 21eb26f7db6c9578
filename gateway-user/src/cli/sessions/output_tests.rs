//! What `chokepoint sessions` prints besides the exit code: the verdict's
//! words, and text from a file shown, never obeyed, on stderr too.
use std::path::Path;

use super::{Summary, Verdict, describe, exit_tests::store, export_lines_to, ledger_tampered_to};
use crate::{
    policy::RecordingSettings,
    recording::{Body, Event, chain, files, ledger::Problem, recover, tests},
};

fn settings(dir: &Path) -> RecordingSettings {
    RecordingSettings {
        dir: dir.join("sessions"),
        keys_dir: dir.join("keys"),
        ..RecordingSettings::default()
    }
}

/// A recorded session's events ending in a recovered seal giving `why`.
fn recovered(why: &str) -> Vec<Event> {
    let event = |seq, body| Event {
        seq,
        session: "20261127T000000Z-000000000001".into(),
        wall: "2026-11-27T00:00:00.000000Z".into(),
        mono_us: 0,
        body,
    };
    vec![
        event(0, tests::start()),
        event(1, tests::statement("DELETE FROM orders")),
        event(2, tests::statement("SELECT 1")),
        event(
            3,
            Body::Seal {
                final_hash: "00".repeat(32),
                public_key: "11".repeat(32),
                signature: String::new(),
                recovered: Some(why.into()),
            },
        ),
    ]
}

/// Found in review: a recovered seal over events past the gateway's last
/// fsync read like any other recovered recording; its reason, which says
/// from which event on nothing but the seal vouches for them, was shown
/// only by `show`. `verify` (and every verdict) now says it.
#[test]
fn a_recovered_verdict_says_which_events_no_fsync_covered() {
    let verdict = Verdict::Recovered { events: 4 };
    let plain = "verified: 4 events, sealed when the gateway started again (it stopped before the session ended)";
    let key = "; by key 1111111111111111…";
    let past = format!(
        "{}; events from seq 2 on were written after the gateway's last fsync and are {}",
        recover::REASON,
        recover::AS_FOUND
    );
    assert_eq!(
        describe(&verdict, &Summary::of(&recovered(&past))),
        format!(
            "{plain}; events from seq 2 on were written after the gateway's last fsync and are sealed as found{key}"
        )
    );
    // Sealed where it was last fsynced (a half line cut off says nothing
    // of events): nothing to add.
    let at_anchor = format!(
        "{}; a half-written last line (20 bytes) was cut off",
        recover::REASON
    );
    assert_eq!(
        describe(&verdict, &Summary::of(&recovered(&at_anchor))),
        format!("{plain}{key}")
    );
    assert_eq!(
        describe(&verdict, &Summary::of(&recovered(recover::REASON))),
        format!("{plain}{key}")
    );
    assert_eq!(
        describe(&Verdict::Sealed { events: 4 }, &Summary::of(&recovered(""))),
        "verified: 4 events, sealed by key 1111111111111111…"
    );
}

/// What a terminal would obey in `text`.
fn obeyed(text: &[u8]) -> bool {
    text.iter().any(|&b| b == 0x1b || b == 0x07)
}

/// Found in review: `export --format jsonl` and a tampered ledger printed
/// their verdicts on stderr as they were, and a reason can quote the file
/// (here a session id with terminal controls that clear the screen and
/// fake a verdict). They now go through `Escaped`, as stdout does.
#[tokio::test]
async fn verdicts_on_stderr_show_text_from_the_file_escaped() {
    let dir = tempfile::tempdir().unwrap();
    // A recorded session: the keys, the ledger and its head.
    let recorder = tests::restart(&settings(dir.path()));
    let session = recorder.open(tests::start()).await;
    session.close(tests::end());
    recorder.shutdown().await;

    let id = "20261127T040000Z-dddddddddddd";
    let mut data = Vec::new();
    let mut prev = chain::GENESIS.to_owned();
    for (seq, session) in [
        id,
        "\x1b]0;pwned\x07\x1b[2J\x1b[32mverified: 3 events, sealed",
    ]
    .into_iter()
    .enumerate()
    {
        let e = Event {
            seq: seq as u64,
            session: session.into(),
            wall: "2026-11-27T04:00:00.000000Z".into(),
            mono_us: 0,
            body: if seq == 0 {
                tests::start()
            } else {
                tests::statement("SELECT 1")
            },
        };
        prev = chain::append_line(&mut data, &prev, &serde_json::to_vec(&e).unwrap());
    }
    let folder = dir.path().join("sessions/2026/11/27");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{id}.jsonl")), &data).unwrap();
    assert!(files::find(&dir.path().join("sessions"), id).is_ok());

    let args = store(dir.path());
    let mut source = args.source(&args.settings().unwrap()).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let verdict = export_lines_to(&source, id, &mut out, &mut err).unwrap();
    assert!(
        matches!(verdict, Verdict::Tampered { line: 2, .. }),
        "{verdict:?}"
    );
    assert_eq!(out, data, "the export is the file, byte for byte");
    let err = String::from_utf8(err).unwrap();
    assert!(!obeyed(err.as_bytes()), "{err:?}");
    assert!(
        err.contains("session \\u{1b}]0;pwned\\u{7}\\u{1b}[2J"),
        "{err:?}"
    );

    source.ledger.as_mut().unwrap().problem = Some(Problem {
        line: 3,
        seq: 2,
        reason: "\x1b[2K\rledger: sound".into(),
    });
    let mut err = Vec::new();
    assert!(ledger_tampered_to(&source, &mut err));
    let err = String::from_utf8(err).unwrap();
    assert!(!obeyed(err.as_bytes()) && !err.contains('\r'), "{err:?}");
    assert!(err.contains("\\u{1b}[2K\\u{d}ledger: sound"), "{err:?}");
}
