//! `show`, `replay` and `export` print as they read: what they print must
//! be what printing the whole recording at once printed.
use std::path::Path;

use super::{
    Verdict,
    exit_tests::store,
    export::{export_document_to, stored_lines},
};
use crate::{
    policy::RecordingSettings,
    recording::{Event, files, tests, verify},
};

fn settings(dir: &Path) -> RecordingSettings {
    RecordingSettings {
        dir: dir.join("sessions"),
        keys_dir: dir.join("keys"),
        ..RecordingSettings::default()
    }
}

/// The document as `export --format json` made it whole, before it
/// streamed: `serde_json`'s text of it, then a newline.
fn whole_document(events: &[Event], verdict: &str) -> String {
    let doc = serde_json::json!({
        "session": events.first().map(|e| e.session.clone()),
        "verdict": verdict,
        "events": events,
    });
    format!("{}\n", serde_json::to_string_pretty(&doc).unwrap())
}

/// The streamed document, and the verdict it says.
fn streamed(dir: &Path, id: &str) -> (Verdict, String, String) {
    let args = store(dir);
    let source = args.source(&args.settings().unwrap()).unwrap();
    let mut out = Vec::new();
    let verdict = export_document_to(&source, id, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect(&text);
    let said = doc["verdict"].as_str().unwrap().to_owned();
    (verdict, text, said)
}

#[tokio::test]
async fn the_streamed_document_is_the_whole_documents_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = tests::restart(&s);
    let session = recorder.open(tests::start()).await;
    for i in 0..3 {
        session.record(tests::statement(&format!(
            "SELECT {i} -- \"quoted\"\n\t\u{1b}[2J"
        )));
    }
    let id = session.id().to_owned();
    session.close(tests::end());
    recorder.shutdown().await;
    let path = files::find(&s.dir, &id).unwrap();
    let data = std::fs::read(&path).unwrap();
    let trusted = [
        crate::recording::keys::read_public(&crate::recording::keys::public_key_path(&s.keys_dir))
            .unwrap(),
    ];

    let (verdict, text, said) = streamed(dir.path(), &id);
    assert!(
        matches!(verdict, Verdict::Sealed { events: 6 }),
        "{verdict:?}"
    );
    let (_, events) = verify::verify(&data, &trusted);
    assert_eq!(text, whole_document(&events, &said));

    // Changed at its third line: the two before it, then the verdict.
    let mut changed = data.clone();
    let at = changed.windows(8).position(|w| w == b"SELECT 1").unwrap();
    changed[at + 7] = b'7';
    std::fs::write(&path, &changed).unwrap();
    let (verdict, text, said) = streamed(dir.path(), &id);
    assert!(
        matches!(verdict, Verdict::Tampered { line: 3, .. }),
        "{verdict:?}"
    );
    let (_, events) = verify::verify(&changed, &trusted);
    assert_eq!(events.len(), 2);
    assert_eq!(text, whole_document(&events, &said));

    // Another session's recording in its place: none of its events, as
    // before.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = tests::restart(&settings(elsewhere.path()));
    let session = other.open(tests::start()).await;
    let other_id = session.id().to_owned();
    session.close(tests::end());
    other.shutdown().await;
    let from = files::find(&elsewhere.path().join("sessions"), &other_id).unwrap();
    std::fs::copy(from, &path).unwrap();
    let (verdict, text, said) = streamed(dir.path(), &id);
    assert!(
        matches!(verdict, Verdict::Tampered { line: 1, .. }),
        "{verdict:?}"
    );
    assert_eq!(text, whole_document(&[], &said));
    assert!(said.contains("put in place of the original"), "{said}");
}

/// A recording cut inside its last line: the events before the cut are
/// printed (they were not when the whole was read first), and the copy
/// as stored keeps the cut line, TAMPERED.
#[tokio::test]
async fn a_truncated_recording_prints_its_events_then_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = tests::restart(&s);
    let session = recorder.open(tests::start()).await;
    session.record(tests::statement("SELECT 1"));
    let id = session.id().to_owned();
    session.close(tests::end());
    recorder.shutdown().await;
    let path = files::find(&s.dir, &id).unwrap();
    let data = std::fs::read(&path).unwrap();
    let cut = &data[..data.len() - 10];
    std::fs::write(&path, cut).unwrap();

    let (verdict, text, said) = streamed(dir.path(), &id);
    assert!(
        matches!(&verdict, Verdict::Tampered { reason, .. } if reason.contains("truncated")),
        "{verdict:?}"
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["events"].as_array().unwrap().len(), 3, "{text}");
    assert!(said.starts_with("TAMPERED"), "{said}");

    let args = store(dir.path());
    let source = args.source(&args.settings().unwrap()).unwrap();
    let (verdict, _, lines) = stored_lines(&source, &id).unwrap();
    assert!(matches!(verdict, Verdict::Tampered { .. }));
    assert_eq!(lines, cut);
}
