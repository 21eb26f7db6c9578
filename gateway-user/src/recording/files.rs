//! Where recordings live: `<dir>/YYYY/MM/DD/<session-id>.jsonl`, the id
//! starting with the UTC start time so names sort by time.
use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// The largest recording read (to verify, list, show, export or recover
/// it): each is read a line at a time, but one made sparse and huge in the
/// directory must not take a reader's time. The writer fails a session
/// whose recording reaches half of this, so none it wrote is larger.
pub const MAX_RECORDING_BYTES: u64 = 1 << 30;

/// The recording at `path` to read a line at a time: refused by its size
/// before anything is read, and an error if it grows past the bound.
pub fn open(path: &Path) -> std::io::Result<std::io::BufReader<crate::regular_file::Bounded>> {
    // Lines of statements and results are mostly well under this.
    Ok(std::io::BufReader::with_capacity(
        64 << 10,
        crate::regular_file::open_bounded(path, MAX_RECORDING_BYTES)?,
    ))
}

/// A fresh session id and its file path.
pub fn new_session(dir: &Path) -> (String, PathBuf) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // "2026-11-27T01:50:12Z" → date parts and "20261127T015012Z".
    let compact: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
    let mut random = [0u8; 6];
    // Should the kernel ever deny randomness, zeros make the next id
    // collide, and the exclusive create then refuses that session.
    let _ = getrandom::fill(&mut random);
    let id = format!("{compact}-{}", hex::encode(random));
    let path = dir
        .join(&now[0..4])
        .join(&now[5..7])
        .join(&now[8..10])
        .join(format!("{id}.jsonl"));
    (id, path)
}

/// Every recording under `dir`, sorted by name (start time).
pub fn all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth > 0 => return Ok(()),
        Err(e) => return Err(at(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| at(dir, e))?;
        let path = entry.path();
        // Not followed: a symlinked folder or file would let retention
        // delete (and verify vouch for) files outside the sessions folder.
        let kind = entry.file_type().map_err(|e| at(&path, e))?;
        if depth < 3 && kind.is_dir() {
            walk(&path, depth + 1, out)?;
        } else if depth == 3 && kind.is_file() && path.extension().is_some_and(|e| e == "jsonl") {
            out.push(path);
        }
    }
    Ok(())
}

/// `e` naming the file or folder it came from: a walk fails deep under
/// the directory its caller names.
fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The recording of session `id` (or a path to one).
pub fn find(dir: &Path, id: &str) -> Result<PathBuf, String> {
    let direct = Path::new(id);
    if id.ends_with(".jsonl") {
        // Said as it is (found in review: every case read "not a session
        // id or a .jsonl file").
        return match std::fs::metadata(direct) {
            Ok(m) if m.is_file() => Ok(direct.to_path_buf()),
            Ok(_) => Err(format!(
                "{id:?} is not a regular file: name the recording itself"
            )),
            Err(e) => Err(format!("cannot open {id:?}: {e}")),
        };
    }
    if !is_id(id) {
        return Err(format!(
            "{id:?} is not a session id (like 20261127T015012Z-1a2b3c4d5e6f) or a .jsonl file"
        ));
    }
    if let Some(path) = home(dir, id)
        && path.is_file()
    {
        return Ok(path);
    }
    Err(format!(
        "no recording {id:?} under {}: list them with `chokepoint sessions list`",
        dir.display()
    ))
}

/// Ids are made of the start time and hex; anything else (a slash, a dot)
/// could only point outside the directory.
pub fn is_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Where session `id`'s recording belongs: the id's first 8 characters are
/// the date, and name its folder.
fn home(dir: &Path, id: &str) -> Option<PathBuf> {
    let (y, m, d) = (id.get(0..4)?, id.get(4..6)?, id.get(6..8)?);
    Some(dir.join(y).join(m).join(d).join(format!("{id}.jsonl")))
}

/// Why the file `path`, found under `dir` by [`all`], is not where its
/// name says its session belongs (`None` when it is): [`find`] would never
/// look there, nor does the daemon write there.
pub fn misplaced(dir: &Path, path: &Path) -> Option<String> {
    let shown = path.display();
    let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
        return Some(format!(
            "{shown}: the name is not UTF-8, so it names no session"
        ));
    };
    if !is_id(id) {
        return Some(format!("{shown}: {id:?} is not a session id"));
    }
    match home(dir, id) {
        Some(home) if home == path => None,
        Some(home) => Some(format!(
            "{shown}: not where its id puts it ({})",
            home.display()
        )),
        None => Some(format!(
            "{shown}: {id:?} is not a session id (it starts with its date, like 20261127T015012Z-1a2b3c4d5e6f)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_in_the_sessions_folder_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let day = root.path().join("2026/11/28");
        fs::create_dir_all(&day).unwrap();
        fs::write(day.join("20261128T000000Z-000000000001.jsonl"), "").unwrap();
        // A folder and a file elsewhere, linked in where recordings live.
        let foreign = outside.path().join("2026/11/29");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("victim.jsonl"), "").unwrap();
        fs::write(outside.path().join("other.jsonl"), "").unwrap();
        std::os::unix::fs::symlink(&foreign, root.path().join("2026/11/29")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("other.jsonl"),
            day.join("20261128T000001Z-000000000002.jsonl"),
        )
        .unwrap();
        let found = all(root.path()).unwrap();
        assert_eq!(found, [day.join("20261128T000000Z-000000000001.jsonl")]);
    }

    #[test]
    fn a_walk_that_fails_names_where() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("sessions");
        let e = all(&missing).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{e}"
        );
        // A file where a year folder goes: not a folder, so not walked.
        fs::write(root.path().join("2026"), "").unwrap();
        assert!(all(root.path()).unwrap().is_empty());
        let file = root.path().join("2026");
        let e = all(&file).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("{}: ", file.display())),
            "{e}"
        );
    }
}
