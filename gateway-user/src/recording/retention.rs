//! Retention: recordings older than `max_age_days` go first, then the
//! oldest until the total fits `max_total_mb`. A session still being
//! written is never removed, whatever its age or size. See [`enforce`]
//! for why ages come from session ids, not file times.
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::files;

/// Limits from `[recording]`; `None` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_age: Option<Duration>,
    pub max_total_bytes: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.max_age.is_none() && self.max_total_bytes.is_none()
    }
}

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub files: usize,
    pub bytes: u64,
    /// The session ids of the recordings the ledger has (now as
    /// `removed`) that went; files it never saw opened are not here.
    pub sessions: Vec<String>,
}

impl Removed {
    fn add(&mut self, file: &Candidate) {
        self.files += 1;
        self.bytes += file.len;
        if file.listed {
            self.sessions.push(file.id.clone());
        }
    }
}

struct Candidate {
    path: PathBuf,
    id: String,
    len: u64,
    /// The ledger has it (opened, sealed or recovered), at this path.
    listed: bool,
    age: Duration,
}

/// When a session id (`20261127T015012Z-…`) says its session started.
fn started(id: &str) -> Option<SystemTime> {
    let t = id.get(..16)?;
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        t.get(0..4)?,
        t.get(4..6)?,
        t.get(6..8)?,
        t.get(9..11)?,
        t.get(11..13)?,
        t.get(13..15)?
    );
    humantime::parse_rfc3339(&rfc).ok()
}

/// One pass over `dir`. Files that vanish meanwhile are skipped.
///
/// Only recordings are removed: files [`files::all`] finds that are where
/// their session id puts them ([`files::misplaced`], the test `sessions
/// list`, `verify` and `find` go by). Anything else under `dir` (a copy
/// in another folder, `notes.jsonl`) is no session of this gateway's: it
/// is left alone, not counted towards `max_total_bytes` (so it cannot
/// push recordings out either), and named in a warning for someone to
/// move away.
///
/// A recording the ledger has (`listed`) is aged by the start time in
/// its id, which nobody can change without renaming it (and a renamed
/// recording is no longer where its id puts it), not by its modification
/// time, which anyone who can write the directory can set. Recordings
/// the ledger misses (never opened by this gateway) go first when the
/// total is too large, so planted files cannot push real recordings out.
/// `is_active` is asked right before each decision to remove.
///
/// The ledger learns of a removal before the file goes: `list_removed`
/// gets the listed sessions chosen and answers once their `removed`
/// lines are fsynced; a listed recording is unlinked only then. Found in
/// review: unlinked first, a crash before the ledger line left a sealed
/// recording missing for good (TAMPERED), and `verify --all` meanwhile
/// saw the same. The other way round, a crash leaves a file the ledger
/// has removed, which the next start deletes ([`super::recover`]).
pub fn enforce(
    dir: &Path,
    limits: Limits,
    is_active: impl Fn(&Path) -> bool,
    listed: &HashSet<String>,
    is_listed_now: impl Fn(&str) -> bool,
    list_removed: impl FnOnce(&[String]) -> bool,
    now: SystemTime,
) -> std::io::Result<Removed> {
    let mut removed = Removed::default();
    if limits.is_unlimited() {
        return Ok(removed);
    }
    let mut doomed: Vec<Candidate> = Vec::new();
    let mut kept: Vec<Candidate> = Vec::new();
    for path in files::all(dir)? {
        if let Some(why) = files::misplaced(dir, &path) {
            tracing::warn!(file = %path.display(), "not a recording, so retention leaves it and does not count it: {why}");
            continue;
        }
        // Not followed: the walk saw a file, and what is there now must
        // still be one for its size to count.
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "retention cannot look at this recording: kept");
                continue;
            }
        };
        // Not misplaced, so its name is a session id.
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let is_listed = listed.contains(&id);
        let since = if is_listed {
            started(&id).or_else(|| meta.modified().ok())
        } else {
            meta.modified().ok()
        };
        let age = since
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        let file = Candidate {
            path,
            id,
            len: meta.len(),
            listed: is_listed,
            age,
        };
        let expired = limits.max_age.is_some_and(|max| file.age > max);
        if expired && !is_active(&file.path) {
            doomed.push(file);
            continue;
        }
        kept.push(file);
    }
    if let Some(max) = limits.max_total_bytes {
        let mut total: u64 = kept.iter().map(|f| f.len).sum();
        // Unknown files first, then the oldest.
        kept.sort_by(|a, b| a.listed.cmp(&b.listed).then(b.age.cmp(&a.age)));
        for file in kept {
            if total <= max {
                break;
            }
            // A session that opened (and maybe ended) during this pass
            // is not a stray file.
            if is_active(&file.path) || (!file.listed && is_listed_now(&file.id)) {
                continue;
            }
            total -= file.len;
            doomed.push(file);
        }
    }
    let sessions: Vec<String> = doomed
        .iter()
        .filter(|f| f.listed)
        .map(|f| f.id.clone())
        .collect();
    let in_ledger = sessions.is_empty() || list_removed(&sessions);
    if !in_ledger {
        tracing::warn!(
            recordings = sessions.len(),
            "the ledger could not list recordings past their retention as removed: they are kept until a later pass"
        );
    }
    for file in doomed {
        if (in_ledger || !file.listed) && remove(&file.path) {
            removed.add(&file);
        }
    }
    remove_empty_dirs(dir);
    Ok(removed)
}

/// Removes one recording; whether it did. One that cannot be removed is
/// named and kept, and the pass goes on with the others.
fn remove(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove a recording past its retention");
            false
        }
    }
}

/// Day, month and year folders left empty (never `dir` itself). Symlinks
/// are not followed: emptied folders elsewhere are not ours to remove.
fn remove_empty_dirs(dir: &Path) {
    for year in sub_dirs(dir) {
        for month in sub_dirs(&year) {
            for day in sub_dirs(&month) {
                // Fails (as wanted) while the folder holds anything.
                let _ = fs::remove_dir(day);
            }
            let _ = fs::remove_dir(&month);
        }
        let _ = fs::remove_dir(&year);
    }
}

/// The folders in `dir`, not counting symlinks to folders.
fn sub_dirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-28T00:00:00Z").unwrap()
    }

    /// A recording named `id`, last written `age` ago.
    fn recording(dir: &Path, id: &str, bytes: usize, age: Duration) -> PathBuf {
        let folder = dir.join(&id[0..4]).join(&id[4..6]).join(&id[6..8]);
        fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{id}.jsonl"));
        fs::write(&path, vec![b'x'; bytes]).unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(now() - age).unwrap();
        path
    }

    /// A retention pass by age alone, nothing active or listed.
    fn enforce_by_age(dir: &Path, max_age: Duration) -> std::io::Result<Removed> {
        enforce(
            dir,
            Limits {
                max_age: Some(max_age),
                max_total_bytes: None,
            },
            |_| false,
            &HashSet::new(),
            |_| false,
            |_| true,
            now(),
        )
    }

    #[test]
    fn old_then_oldest_go_but_never_an_active_session() {
        let dir = tempfile::tempdir().unwrap();
        let a = recording(dir.path(), "20261018T000000Z-a", 100, 41 * DAY);
        let b = recording(dir.path(), "20261023T000000Z-b", 100, 36 * DAY);
        let c = recording(dir.path(), "20261121T000000Z-c", 100, 7 * DAY);
        let d = recording(dir.path(), "20261127T000000Z-d", 100, DAY);
        let e = recording(dir.path(), "20261127T120000Z-e", 100, Duration::ZERO);
        let ended: HashSet<String> = [&a, &b, &c, &d, &e]
            .iter()
            .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
            .collect();
        // `b` is old but still being written.
        let active: HashSet<PathBuf> = [b.clone()].into();
        let limits = Limits {
            max_age: Some(30 * DAY),
            max_total_bytes: Some(250),
        };
        let removed = enforce(
            dir.path(),
            limits,
            |p| active.contains(p),
            &ended,
            |_| false,
            |_| true,
            now(),
        )
        .unwrap();
        assert_eq!(
            removed,
            Removed {
                files: 3,
                bytes: 300,
                sessions: vec![
                    "20261018T000000Z-a".into(),
                    "20261121T000000Z-c".into(),
                    "20261127T000000Z-d".into()
                ],
            }
        );
        assert!(!a.exists() && !c.exists() && !d.exists());
        assert!(b.exists() && e.exists());
        // Unlimited: nothing to do.
        let removed = enforce(
            dir.path(),
            Limits::default(),
            |p| active.contains(p),
            &ended,
            |_| false,
            |_| true,
            now(),
        )
        .unwrap();
        assert_eq!(removed, Removed::default());
    }

    #[test]
    fn a_backdated_recording_stays_and_planted_files_go_first() {
        let dir = tempfile::tempdir().unwrap();
        // A real, recent recording whose modification time was set back.
        let real = recording(dir.path(), "20261127T000000Z-real", 100, 90 * DAY);
        // A large file the ledger never saw, named as if new.
        let planted = recording(dir.path(), "20261127T230000Z-junk", 1000, Duration::ZERO);
        let older = recording(dir.path(), "20261120T000000Z-old", 100, 8 * DAY);
        // A large copy under a real recording's name, in another folder:
        // nothing the ledger has, whatever its name.
        let elsewhere = dir.path().join("2020").join("01").join("01");
        fs::create_dir_all(&elsewhere).unwrap();
        let copy = elsewhere.join("20261127T000000Z-real.jsonl");
        fs::write(&copy, vec![b'x'; 1000]).unwrap();
        let ended: HashSet<String> = ["20261127T000000Z-real", "20261120T000000Z-old"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let limits = Limits {
            max_age: Some(30 * DAY),
            max_total_bytes: Some(500),
        };
        let removed = enforce(
            dir.path(),
            limits,
            |_| false,
            &ended,
            |_| false,
            |_| true,
            now(),
        )
        .unwrap();
        assert!(
            real.exists() && older.exists(),
            "a real recording was pushed out"
        );
        // The copy is no recording: kept, and not counted either.
        assert!(!planted.exists() && copy.exists());
        assert_eq!((removed.files, removed.sessions.len()), (1, 0));
    }

    #[test]
    fn only_files_where_their_session_id_puts_them_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("2026/10/01");
        let old = recording(dir.path(), "20261001T000000Z-old", 10, 60 * DAY);
        // Files that are no recording, old and large: not removed.
        let notes = day.join("notes.jsonl");
        let moved = day.join("20261002T000000Z-moved.jsonl");
        for path in [&notes, &moved] {
            fs::write(path, vec![b'x'; 1000]).unwrap();
            let file = fs::File::options().write(true).open(path).unwrap();
            file.set_modified(now() - 90 * DAY).unwrap();
        }
        let new = recording(dir.path(), "20261127T000000Z-new", 10, DAY);
        let limits = Limits {
            max_age: Some(30 * DAY),
            max_total_bytes: Some(100),
        };
        let removed = enforce(
            dir.path(),
            limits,
            |_| false,
            &HashSet::new(),
            |_| false,
            |_| true,
            now(),
        )
        .unwrap();
        assert!(!old.exists(), "an old recording stayed");
        assert!(
            notes.exists() && moved.exists(),
            "a file that is no recording was removed"
        );
        // 2000 bytes of them, over the 100 allowed: yet the recording stays.
        assert!(new.exists(), "files that are no recording pushed one out");
        assert_eq!((removed.files, removed.bytes), (1, 10));
    }

    #[test]
    fn the_ledger_lists_a_removal_before_the_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = recording(dir.path(), "20261001T000000Z-sealed", 10, 60 * DAY);
        let stray = recording(dir.path(), "20261002T000000Z-stray", 10, 60 * DAY);
        let listed: HashSet<String> = ["20261001T000000Z-sealed".to_owned()].into();
        let limits = Limits {
            max_age: Some(30 * DAY),
            max_total_bytes: None,
        };
        let pass = |answer: bool| {
            enforce(
                dir.path(),
                limits,
                |_| false,
                &listed,
                |_| false,
                |sessions: &[String]| {
                    assert_eq!(sessions, ["20261001T000000Z-sealed"]);
                    assert!(sealed.exists(), "unlinked before the ledger said so");
                    answer
                },
                now(),
            )
            .unwrap()
        };
        // The ledger could not take the line: the listed recording stays,
        // a file it never had goes all the same.
        let removed = pass(false);
        assert!(sealed.exists() && !stray.exists());
        assert!(removed.sessions.is_empty());
        let removed = pass(true);
        assert!(!sealed.exists());
        assert_eq!(removed.sessions, ["20261001T000000Z-sealed"]);
    }

    #[test]
    fn emptied_folders_elsewhere_are_not_removed_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let deep = outside.path().join("11").join("28");
        fs::create_dir_all(&deep).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("2026")).unwrap();
        enforce_by_age(dir.path(), DAY).unwrap();
        assert!(deep.exists(), "an empty folder outside was removed");
    }

    #[test]
    fn a_pass_that_cannot_walk_names_where() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("sessions");
        let e = enforce_by_age(&missing, DAY).unwrap_err();
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn empty_day_folders_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        recording(
            dir.path(),
            "20261101T000000Z-a",
            10,
            Duration::from_secs(10),
        );
        enforce_by_age(dir.path(), Duration::from_secs(1)).unwrap();
        assert!(!dir.path().join("2026").exists());
        assert!(dir.path().exists());
    }
}
