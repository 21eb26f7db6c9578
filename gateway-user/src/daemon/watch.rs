//! Reloading when a policy file changes, besides on SIGHUP. The files the
//! running policy was read from, and the folders they sit in (a file added
//! to an `include` glob's folder, or an editor saving by rename, changes
//! the folder), are looked at every [`EVERY`]; a change that has stayed
//! put for one more look reloads, so a file caught half-written is not
//! taken for the new policy.
use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

/// How often the files are looked at.
pub(crate) const EVERY: Duration = Duration::from_secs(2);

/// Size, modification time (seconds, nanoseconds) and inode: what tells
/// a file's content changed without reading it.
type Stamp = (u64, i64, i64, u64);

/// Each watched path's [`Stamp`] (`None`: it is gone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(PathBuf, Option<Stamp>)>);

fn fingerprint(sources: &[PathBuf]) -> Fingerprint {
    let mut paths: BTreeSet<&Path> = sources.iter().map(PathBuf::as_path).collect();
    for source in sources {
        if let Some(dir) = source.parent() {
            paths.insert(dir);
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
}
