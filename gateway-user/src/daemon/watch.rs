//! Reloading when a policy file changes, besides on SIGHUP. The files the
//! running policy was read from, the folders they sit in (a file added
//! to an `include` glob's folder, or an editor saving by rename, changes
//! the folder) and the folder each `include` glob looks in, matched or
//! not (an empty `policy.d` has no file to lead to it), are looked at
//! every [`EVERY`]; a change that has stayed put for one more look
//! reloads, so a file caught half-written is not taken for the new policy.
use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::policy::Policy;

/// How often the files are looked at.
pub(crate) const EVERY: Duration = Duration::from_secs(2);

/// Size, modification time (seconds, nanoseconds) and inode: what tells
/// a file's content changed without reading it.
type Stamp = (u64, i64, i64, u64);

/// Each watched path's [`Stamp`] (`None`: it is gone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(PathBuf, Option<Stamp>)>);

/// What to watch for `policy`: the files it was read from and the folders
/// its `include` globs look in.
pub(crate) fn watched(policy: &Policy) -> Vec<PathBuf> {
    policy
        .sources()
        .iter()
        .chain(policy.include_dirs())
        .cloned()
        .collect()
}

fn fingerprint(sources: &[PathBuf]) -> Fingerprint {
    let mut paths: BTreeSet<&Path> = sources.iter().map(PathBuf::as_path).collect();
    for source in sources {
        if let Some(dir) = source.parent() {
            // `chokepoint.toml` given bare: its folder is the current one,
            // and "" is no path to look at.
            paths.insert(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            });
        }
    }
    Fingerprint(
        paths
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(p).ok();
                let id = meta.map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
                (p.to_path_buf(), id)
            })
            .collect(),
    )
}

pub(crate) struct Watch {
    /// As the running policy was read (or its last reload attempted).
    loaded: Fingerprint,
    /// At the last look.
    last: Fingerprint,
}

impl Watch {
    pub(crate) fn new(sources: &[PathBuf]) -> Self {
        let loaded = fingerprint(sources);
        Self {
            last: loaded.clone(),
            loaded,
        }
    }

    /// One look: whether the files differ from what was loaded and did not
    /// change since the last look.
    pub(crate) fn changed(&mut self, sources: &[PathBuf]) -> bool {
        let now = fingerprint(sources);
        let settled = now == self.last;
        self.last = now;
        settled && self.last != self.loaded
    }

    /// The files as they are, taken right before a reload reads them: a
    /// save while it runs is then a change still to reload.
    pub(crate) fn before_reload(sources: &[PathBuf]) -> Fingerprint {
        fingerprint(sources)
    }

    /// After a reload (valid or not): the files as they were read count
    /// as loaded, so an invalid file is reported once, not at every look.
    pub(crate) fn reloaded(&mut self, read: Fingerprint) {
        self.last = read.clone();
        self.loaded = read;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reloads_once_after_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chokepoint.toml");
        std::fs::write(&config, "a").unwrap();
        let sources = vec![config.clone()];
        let mut watch = Watch::new(&sources);
        assert!(!watch.changed(&sources), "nothing changed");

        std::fs::write(&config, "longer").unwrap();
        assert!(
            !watch.changed(&sources),
            "reloaded before the change settled"
        );
        assert!(watch.changed(&sources), "a settled change was missed");
        watch.reloaded(Watch::before_reload(&sources));
        assert!(!watch.changed(&sources));

        // A new file beside it (an include glob's folder) counts too.
        std::fs::write(dir.path().join("extra.toml"), "b").unwrap();
        assert!(!watch.changed(&sources));
        assert!(watch.changed(&sources));
        watch.reloaded(Watch::before_reload(&sources));

        // So does replacing the file by rename, as editors save.
        let tmp = dir.path().join("chokepoint.toml.new");
        std::fs::write(&tmp, "a").unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        assert!(!watch.changed(&sources));
        assert!(watch.changed(&sources));
    }

    const RULE: &str = "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"*\"]\n";

    /// Found in review: with nothing in `policy.d` no file led the watch
    /// there, so the first policy file dropped in waited for a SIGHUP, and
    /// so did every one after the last was removed.
    #[test]
    fn the_first_file_in_an_empty_include_folder_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chokepoint.toml");
        std::fs::write(&config, "[daemon]\ninclude = [\"policy.d/*.toml\"]\n").unwrap();
        std::fs::create_dir(dir.path().join("policy.d")).unwrap();
        let policy = Policy::load(&config).unwrap();
        let paths = watched(&policy);
        let mut watch = Watch::new(&paths);

        let new = dir.path().join("policy.d/new.toml");
        std::fs::write(&new, RULE).unwrap();
        assert!(
            (0..3).any(|_| watch.changed(&paths)),
            "a file added to an empty include folder was missed"
        );

        // Reloaded with it, then it goes: the folder is empty again.
        let policy = Policy::load(&config).unwrap();
        let paths = watched(&policy);
        watch.reloaded(Watch::before_reload(&paths));
        std::fs::remove_file(&new).unwrap();
        assert!((0..3).any(|_| watch.changed(&paths)));
        let policy = Policy::load(&config).unwrap();
        let paths = watched(&policy);
        watch.reloaded(Watch::before_reload(&paths));
        assert!(!watch.changed(&paths));
        std::fs::write(dir.path().join("policy.d/again.toml"), RULE).unwrap();
        assert!(
            (0..3).any(|_| watch.changed(&paths)),
            "a file added after the last one was removed was missed"
        );
    }

    #[test]
    fn an_include_glob_names_the_folder_before_its_first_wildcard() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chokepoint.toml");
        std::fs::write(
            &config,
            "[daemon]\ninclude = [\"policy.d/*.toml\", \"teams/*/rules.toml\", \"*.extra.toml\", \"/nonexistent/cp/*.toml\"]\n",
        )
        .unwrap();
        let policy = Policy::load(&config).unwrap();
        assert_eq!(
            policy.include_dirs(),
            [
                dir.path().join("policy.d"),
                dir.path().join("teams"),
                dir.path().to_path_buf(),
                PathBuf::from("/nonexistent/cp"),
            ]
        );
    }
}
