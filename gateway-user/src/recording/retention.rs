//! Retention: recordings older than `max_age_days` (by last write) go
//! first, then the oldest until the total fits `max_total_mb`. A session
//! still being written is never removed, whatever its age or size.
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
    /// Their session ids, for the ledger.
    pub sessions: Vec<String>,
}

impl Removed {
    fn add(&mut self, path: &Path, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
        if let Some(id) = path.file_stem().and_then(|s| s.to_str()) {
            self.sessions.push(id.to_owned());
        }
    }
}

/// One pass over `dir`. Files that vanish meanwhile are skipped.
pub fn enforce(
    dir: &Path,
    limits: Limits,
    active: &HashSet<PathBuf>,
    now: SystemTime,
) -> std::io::Result<Removed> {
    let mut removed = Removed::default();
    if limits.is_unlimited() {
        return Ok(removed);
    }
    // Oldest first: names start with the session's start time.
    let mut kept: Vec<(PathBuf, u64)> = Vec::new();
    for path in files::all(dir)? {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        let expired = limits.max_age.is_some_and(|max| age > max);
        if expired && !active.contains(&path) {
            if fs::remove_file(&path).is_ok() {
                removed.add(&path, meta.len());
            }
            continue;
        }
        kept.push((path, meta.len()));
    }
    if let Some(max) = limits.max_total_bytes {
        let mut total: u64 = kept.iter().map(|(_, len)| len).sum();
        for (path, len) in &kept {
            if total <= max {
                break;
            }
            if active.contains(path) {
                continue;
            }
            if fs::remove_file(path).is_ok() {
                total -= len;
                removed.add(path, *len);
            }
        }
    }
    remove_empty_dirs(dir);
    Ok(removed)
}

/// Day, month and year folders left empty (never `dir` itself).
fn remove_empty_dirs(dir: &Path) {
    let Ok(years) = fs::read_dir(dir) else { return };
    for year in years.flatten() {
        let year = year.path();
        for month in fs::read_dir(&year).into_iter().flatten().flatten() {
            let month = month.path();
            for day in fs::read_dir(&month).into_iter().flatten().flatten() {
                // Fails (as wanted) while the folder holds anything.
                let _ = fs::remove_dir(day.path());
            }
            let _ = fs::remove_dir(&month);
        }
        let _ = fs::remove_dir(&year);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(dir: &Path, name: &str, bytes: usize, age: Duration, now: SystemTime) -> PathBuf {
        let folder = dir.join("2026").join("11").join("27");
        fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{name}.jsonl"));
        fs::write(&path, vec![b'x'; bytes]).unwrap();
        let file = fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(now - age).unwrap();
        path
    }

    #[test]
    fn old_then_oldest_go_but_never_an_active_session() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let a = recording(dir.path(), "20261101T000000Z-a", 100, 40 * day, now);
        let b = recording(dir.path(), "20261102T000000Z-b", 100, 35 * day, now);
        let c = recording(dir.path(), "20261120T000000Z-c", 100, 7 * day, now);
        let d = recording(dir.path(), "20261126T000000Z-d", 100, day, now);
        let e = recording(dir.path(), "20261127T000000Z-e", 100, Duration::ZERO, now);
        // `b` is old but still being written.
        let active: HashSet<PathBuf> = [b.clone()].into();
        let limits = Limits {
            max_age: Some(30 * day),
            max_total_bytes: Some(250),
        };
        let removed = enforce(dir.path(), limits, &active, now).unwrap();
        assert_eq!(
            removed,
            Removed {
                files: 3,
                bytes: 300,
                sessions: vec![
                    "20261101T000000Z-a".into(),
                    "20261120T000000Z-c".into(),
                    "20261126T000000Z-d".into()
                ],
            }
        );
        assert!(!a.exists() && !c.exists() && !d.exists());
        assert!(b.exists() && e.exists());
        // Unlimited: nothing to do.
        let removed = enforce(dir.path(), Limits::default(), &active, now).unwrap();
        assert_eq!(removed, Removed::default());
    }

    #[test]
    fn empty_day_folders_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        recording(
            dir.path(),
            "20261101T000000Z-a",
            10,
            Duration::from_secs(10),
            now,
        );
        let limits = Limits {
            max_age: Some(Duration::from_secs(1)),
            max_total_bytes: None,
        };
        enforce(dir.path(), limits, &HashSet::new(), now).unwrap();
        assert!(!dir.path().join("2026").exists());
        assert!(dir.path().exists());
    }
}
