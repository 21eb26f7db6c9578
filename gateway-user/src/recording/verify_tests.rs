//! The line-at-a-time checker against the whole-file check it replaced:
//! the same verdict on every way a recording can be altered, and memory
//! that does not grow with the recording.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    io::{BufReader, Write},
};

use super::{
    chain,
    event::{Body, Event},
    keys::{self, HostKey},
    tests::{start, statement},
    verify::{self, Checker, Verdict},
};

/// A recording of `statements` statements, sealed or not, by `key`.
fn recording(key: &HostKey, statements: u64, sealed: bool) -> Vec<u8> {
    let session = "20261129T070000Z-aaaaaaaaaaaa";
    let mut out = Vec::new();
    let mut prev = chain::GENESIS.to_owned();
    let mut push = |seq: u64, body: Body, out: &mut Vec<u8>| {
        let event = Event {
            seq,
            session: session.into(),
            wall: "2026-11-29T07:00:00.000000Z".into(),
            mono_us: seq * 10,
            body,
        };
        prev = chain::append_line(out, &prev, &serde_json::to_vec(&event).unwrap());
        prev.clone()
    };
    let mut last = push(0, start(), &mut out);
    for seq in 1..=statements {
        last = push(seq, statement(&format!("SELECT {seq}")), &mut out);
    }
    if sealed {
        let seal = Body::Seal {
            final_hash: last.clone(),
            public_key: key.public_hex(),
            signature: key.sign(session, &last),
            recovered: None,
        };
        push(statements + 1, seal, &mut out);
    }
    out
}

/// `verify` as it was before the checker: the whole recording at once.
/// Kept to hold the checker to its verdicts.
fn whole_file(data: &[u8], trusted: &[String]) -> Verdict {
    let tampered = |line, seq, reason: String| Verdict::Tampered { line, seq, reason };
    let mut events: Vec<Event> = Vec::new();
    let mut prev = chain::GENESIS.to_owned();
    let (mut sealed, mut recovered_seal) = (false, false);
    let body = match data.strip_suffix(b"\n") {
        Some(body) => body,
        None if data.is_empty() => return tampered(1, None, "the recording is empty".into()),
        None => {
            let line = data.split(|&b| b == b'\n').count();
            return tampered(
                line,
                None,
                format!("the file ends inside line {line}: it was truncated"),
            );
        }
    };
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let (n, seq) = (i + 1, Some(i as u64));
        if sealed {
            return tampered(n, seq, "a line follows the seal".into());
        }
        let (hash, prev_hash, event) = match chain::split(line) {
            Ok(parts) => parts,
            Err(why) => return tampered(n, seq, why.into()),
        };
        if prev_hash != prev {
            return tampered(
                n,
                seq,
                "prev_hash does not match the line before: a line was removed, inserted or moved"
                    .into(),
            );
        }
        if chain::hash(&prev, event) != hash {
            return tampered(
                n,
                seq,
                "the hash does not match the event: the line was changed".into(),
            );
        }
        let parsed: Event = match serde_json::from_slice(event) {
            Ok(e) => e,
            Err(e) => return tampered(n, seq, format!("the event is not valid: {e}")),
        };
        if parsed.seq != i as u64 {
            return tampered(n, seq, format!("seq is {} where {i} belongs", parsed.seq));
        }
        if let Some(first) = events.first()
            && first.session != parsed.session
        {
            return tampered(
                n,
                seq,
                format!("the event belongs to session {}", parsed.session),
            );
        }
        if i == 0 && !matches!(parsed.body, Body::SessionStart { .. }) {
            return tampered(
                n,
                Some(0),
                "the first event is not the session start".into(),
            );
        }
        if let Body::Seal {
            final_hash,
            public_key,
            signature,
            recovered,
        } = &parsed.body
        {
            if *final_hash != prev {
                return tampered(
                    n,
                    seq,
                    "the seal does not name the hash of the event before it".into(),
                );
            }
            if !trusted.contains(public_key) {
                return tampered(
                    n,
                    seq,
                    format!(
                        "the seal names key {public_key}, which is not trusted here (trusted: {})",
                        trusted.join(", ")
                    ),
                );
            }
            if !keys::verify(
                public_key,
                &parsed.session,
                final_hash,
                recovered.as_deref(),
                signature,
            ) {
                return tampered(n, seq, "the seal's signature does not verify".into());
            }
            sealed = true;
            recovered_seal = recovered.is_some();
        }
        prev = hash.to_owned();
        events.push(parsed);
    }
    let events = events.len() as u64;
    if recovered_seal {
        Verdict::Recovered { events }
    } else if sealed {
        Verdict::Sealed { events }
    } else {
        Verdict::Unsealed { events }
    }
}

/// The checker's verdict on `data` read from a file through a buffer of
/// `capacity` bytes, so lines arrive in pieces.
fn streamed(data: &[u8], trusted: &[String], capacity: usize) -> Verdict {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    streamed_from(
        BufReader::with_capacity(capacity, file.reopen().unwrap()),
        trusted,
    )
}

fn streamed_from(reader: impl std::io::BufRead, trusted: &[String]) -> Verdict {
    let mut checker = Checker::new(trusted);
    let torn = verify::feed(reader, &mut checker).unwrap();
    checker.finish(torn).verdict
}

fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split_inclusive(|&b| b == b'\n').collect()
}

#[test]
fn the_checker_reaches_the_verdicts_of_the_whole_file_check() {
    let keys = tempfile::tempdir().unwrap();
    let key = HostKey::load_or_create(&keys.path().join("keys")).unwrap();
    let trusted = [key.public_hex()];
    let data = recording(&key, 3, true);
    let all = lines(&data);
    let other_keys = tempfile::tempdir().unwrap();
    let other = recording(
        &HostKey::load_or_create(&other_keys.path().join("keys")).unwrap(),
        3,
        true,
    );
    let flipped = {
        let mut d = data.clone();
        let at = d.windows(8).position(|w| w == b"SELECT 2").unwrap();
        d[at + 7] = b'9';
        d
    };
    let cases: Vec<(&str, Vec<u8>, Verdict)> = vec![
        ("intact", data.clone(), Verdict::Sealed { events: 5 }),
        (
            "unsealed",
            all[..4].concat(),
            Verdict::Unsealed { events: 4 },
        ),
        ("flipped", flipped, tampered(3, "was changed")),
        (
            "deleted",
            [&all[..2], &all[3..]].concat().concat(),
            tampered(3, "removed, inserted or moved"),
        ),
        (
            "swapped",
            [all[0], all[2], all[1], all[3], all[4]].concat(),
            tampered(2, "removed, inserted or moved"),
        ),
        (
            "truncated",
            data[..data.len() - 10].to_vec(),
            tampered(5, "truncated"),
        ),
        (
            "replaced seal",
            [all[..4].concat(), lines(&other)[4].to_vec()].concat(),
            tampered(5, ""),
        ),
        (
            "a line after the seal",
            [data.as_slice(), all[4]].concat(),
            tampered(6, "follows the seal"),
        ),
        ("empty", Vec::new(), tampered(1, "empty")),
    ];
    for (what, data, expected) in cases {
        let before = whole_file(&data, &trusted);
        assert!(same_kind(&before, &expected), "{what}: {before:?}");
        for capacity in [1, 7, 64 << 10] {
            assert_eq!(streamed(&data, &trusted, capacity), before, "{what}");
        }
        assert_eq!(verify::verify(&data, &trusted).0, before, "{what}");
    }
}

fn tampered(line: usize, reason: &str) -> Verdict {
    Verdict::Tampered {
        line,
        seq: None,
        reason: reason.into(),
    }
}

/// Whether `got` is `expected`, a tampered one by its line and a part of
/// its reason.
fn same_kind(got: &Verdict, expected: &Verdict) -> bool {
    match (got, expected) {
        (
            Verdict::Tampered { line, reason, .. },
            Verdict::Tampered {
                line: l, reason: r, ..
            },
        ) => line == l && reason.contains(r.as_str()),
        _ => got == expected,
    }
}

/// Every cut and every changed byte, against the whole-file check: a
/// problem before a cut must not hide the cut, nor the other way round.
/// Read from memory in pieces of 5 bytes: thousands of files would only
/// slow it down.
#[test]
fn every_cut_and_every_changed_byte_reads_as_before() {
    let keys = tempfile::tempdir().unwrap();
    let key = HostKey::load_or_create(&keys.path().join("keys")).unwrap();
    let trusted = [key.public_hex()];
    let data = recording(&key, 2, true);
    for end in 0..=data.len() {
        let cut = &data[..end];
        let streamed = streamed_from(BufReader::with_capacity(5, cut), &trusted);
        assert_eq!(streamed, whole_file(cut, &trusted), "cut at {end}");
    }
    for at in 0..data.len() {
        for byte in [b'\n', b'x'] {
            let mut changed = data.clone();
            changed[at] = byte;
            let changed_end = changed[..changed.len() - 3].to_vec();
            for d in [changed, changed_end] {
                let streamed = streamed_from(BufReader::with_capacity(5, &d[..]), &trusted);
                assert_eq!(streamed, whole_file(&d, &trusted), "byte {at}");
            }
        }
    }
}

thread_local! {
    /// Bytes this thread holds from the allocator, and the most it held
    /// since it was last reset.
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Counts each thread's allocations, so a test can tell what it held
/// itself whatever other tests do meanwhile. For the whole test binary.
struct Counting;

#[global_allocator]
static COUNTING: Counting = Counting;

fn count(delta: isize) {
    let _ = HELD.try_with(|held| {
        held.set(held.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(held.get())));
    });
}

// SAFETY: forwards to the system allocator unchanged; the counting
// touches only const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The most this thread held above what it held before, while checking
/// `data` (read through a file's buffer, as `verify` reads it).
fn peak_checking(data: &[u8], trusted: &[String], collect: bool) -> (isize, Verdict) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    let reader = BufReader::new(file.reopen().unwrap());
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let mut checker = Checker::new(trusted);
    if collect {
        checker = checker.collecting();
    }
    let torn = verify::feed(reader, &mut checker).unwrap();
    let verdict = checker.finish(torn).verdict;
    (PEAK.with(Cell::get) - base, verdict)
}

/// What the checker holds follows the longest line, not the number of
/// lines: counted by the allocator, not timed, so it cannot be flaky.
#[test]
fn the_checker_holds_as_much_for_many_lines_as_for_a_few() {
    let keys = tempfile::tempdir().unwrap();
    let key = HostKey::load_or_create(&keys.path().join("keys")).unwrap();
    let trusted = [key.public_hex()];
    let few = recording(&key, 100, true);
    let many = recording(&key, 20_000, true);
    assert!(many.len() > 3 << 20, "{}", many.len());
    let (held_few, verdict) = peak_checking(&few, &trusted, false);
    assert_eq!(verdict, Verdict::Sealed { events: 102 });
    let (held_many, verdict) = peak_checking(&many, &trusted, false);
    assert_eq!(verdict, Verdict::Sealed { events: 20_002 });
    // The same lines, a few digits longer: the same buffers.
    assert!(
        held_many <= held_few + (4 << 10),
        "{held_few} bytes for 102 events, {held_many} for 20002"
    );
    // The count sees what is held: collecting the events grows with them.
    let (collected, _) = peak_checking(&many, &trusted, true);
    assert!(collected > 10 * held_many, "{collected}, {held_many}");
}
