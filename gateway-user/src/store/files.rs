//! The single-host store: `<dir>/<id>.json`, written whole and then put in place.
use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{ApprovalStore, Change, StoreError};
use crate::approvals::{Request, is_id};

/// Requests as files. Every change goes through the daemon that owns the
/// directory, so one lock serialises them.
pub struct FileStore {
    dir: PathBuf,
    lock: Mutex<()>,
}

/// The largest request file read or written. A request holds one held
/// statement (at most `approvals::MAX_HELD_BYTES`, 64 KiB, which JSON
/// escaping can make at most six times longer) and a few short fields
/// and votes, so 1 MiB leaves room; anything bigger was not written by
/// this store, and must not make the daemon allocate without end.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl FileStore {
    /// Creates the directory (0700) if needed.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("cannot create", dir, e))?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !is_id(id) {
            return Err(StoreError::Unknown(id.to_owned()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn read(&self, path: &Path) -> Result<Option<Request>, StoreError> {
        read(path)
    }

    /// Runs `f` on the directory on a blocking thread: a listing reads
    /// every request file, which must not stall the sessions' runtime.
    async fn in_dir<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
            .await
            .map_err(|e| StoreError::Io(format!("listing {}: {e}", self.dir.display())))?
    }

    /// Whole file, fsynced, then put in place and the directory fsynced:
    /// a reader (`get` and `list` take no lock) or a crash sees the old
    /// request or the new one, never part of one, and a request `create`
    /// reported stored survives a power loss. A new request is linked
    /// into place rather than renamed, as a link never replaces an
    /// existing request of the same id.
    fn write(&self, path: &Path, request: &Request, new: bool) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(request).map_err(|e| StoreError::Io(e.to_string()))?;
        // Refused here rather than written: a file over the bound would
        // make every later read of it, and so every listing, fail.
        if json.len() as u64 > MAX_REQUEST_BYTES {
            return Err(StoreError::Io(format!(
                "{}: request {} is {} bytes as JSON, more than the {MAX_REQUEST_BYTES} a request file may hold",
                path.display(),
                request.id,
                json.len()
            )));
        }
        // Not `.json`: `list` skips it. Writes hold the lock, so one name
        // per request is enough, and one left by a crash is overwritten.
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create", &tmp, e))?;
        f.write_all(&json)
            .map_err(|e| io("cannot write", &tmp, e))?;
        f.sync_all().map_err(|e| io("cannot sync", &tmp, e))?;
        drop(f);
        if new {
            let linked = fs::hard_link(&tmp, path).map_err(|e| io("cannot create", path, e));
            // The request is in place (or refused) either way; a leftover
            // temporary file is skipped by `list` and reused by the next write.
            let _ = fs::remove_file(&tmp);
            linked?;
        } else {
            fs::rename(&tmp, path).map_err(|e| io("cannot replace", path, e))?;
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync", &self.dir, e))
    }
}

#[async_trait]
impl ApprovalStore for FileStore {
    async fn create(&self, request: &Request) -> Result<(), StoreError> {
        let path = self.path(&request.id)?;
        let _guard = self.lock.lock().await;
        self.write(&path, request, true)
    }

    async fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        let Ok(path) = self.path(id) else {
            return Ok(None);
        };
        self.read(&path)
    }

    async fn list(&self, all: bool) -> Result<Vec<Request>, StoreError> {
        self.in_dir(move |dir| {
            let mut out: Vec<Request> = list(dir)?
                .into_iter()
                .map(|(_, r)| r)
                .filter(|r| all || r.state == crate::approvals::State::Pending)
                .collect();
            out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn prune(&self, before: std::time::SystemTime) -> Result<usize, StoreError> {
        // No update may rewrite a request between its reading and removal.
        let _guard = self.lock.lock().await;
        self.in_dir(move |dir| {
            let mut removed = 0;
            for (path, r) in list(dir)? {
                if r.settled_at().is_some_and(|at| at < before) {
                    fs::remove_file(&path).map_err(|e| io("cannot remove", &path, e))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn update(&self, id: &str, change: Change<'_>) -> Result<Request, StoreError> {
        let path = self.path(id)?;
        let _guard = self.lock.lock().await;
        let mut request = self
            .read(&path)?
            .ok_or_else(|| StoreError::Unknown(id.to_owned()))?;
        change(&mut request).map_err(StoreError::Refused)?;
        self.write(&path, &request, false)?;
        Ok(request)
    }
}

/// The request in `path`; `None` when there is no such file. Anything but
/// a regular file is refused (opening a FIFO put there would wait for a
/// writer forever), and so is a file over [`MAX_REQUEST_BYTES`].
fn read(path: &Path) -> Result<Option<Request>, StoreError> {
    match crate::regular_file::read_bounded(path, MAX_REQUEST_BYTES) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Io(format!("{} is not a request: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", path, e)),
    }
}

/// Every request file in `dir`, with its path. A file that does not read
/// as a request fails the listing, naming it: skipping it would hide a
/// pending request from its approvers with nobody told, and requests are
/// only ever written whole, so such a file is damage or a hand edit that
/// someone must look at. A file removed meanwhile (pruned) is no loss
/// and is skipped.
fn list(dir: &Path) -> Result<Vec<(PathBuf, Request)>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io("cannot list", dir, e))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        if let Some(r) = read(&path)? {
            out.push((path, r));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::State;

    fn request(id: &str) -> Request {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "state": "pending",
            "who": {
                "identity": "ci:job",
                "uid": 1000,
                "pid": 1,
                "comm": "psql",
                "cgroup_id": 1,
                "session": "s"
            },
            "target": "db",
            "role": "app",
            "database": "app",
            "statement": "DELETE FROM t",
            "digest": "00",
            "class": "delete",
            "rule": "r",
            "reason": "why",
            "approvers": ["alice"],
            "min_approvals": 1,
            "created": "2026-11-28T00:00:00Z",
            "expires": "2026-11-28T01:00:00Z",
            "gateway": "test/default"
        }))
        .unwrap()
    }

    /// `f` on the store, failing the test instead of hanging it when the
    /// store blocks (as opening a FIFO does).
    fn within_5s<T: Send + 'static>(
        store: &std::sync::Arc<FileStore>,
        f: impl AsyncFnOnce(&FileStore) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let store = store.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = tx.send(rt.block_on(f(&store)));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the store answers within 5 s")
    }

    /// `result` is an error naming `path` and saying `why`.
    fn assert_refused<T: std::fmt::Debug>(result: Result<T, StoreError>, path: &Path, why: &str) {
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains(why),
            "{e}"
        );
    }

    #[test]
    fn a_fifo_huge_or_broken_request_file_is_named_not_hung_on_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileStore::open(dir.path()).unwrap());
        within_5s(&store, async |s| s.create(&request("apr-good1")).await).unwrap();
        assert_eq!(
            within_5s(&store, async |s| s.list(false).await)
                .unwrap()
                .len(),
            1
        );

        // A FIFO where a request belongs: refused at once, by name.
        let fifo = dir.path().join("apr-fifo1.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
        assert_refused(
            within_5s(&store, async |s| s.get("apr-fifo1").await),
            &fifo,
            "FIFO",
        );
        assert_refused(
            within_5s(&store, async |s| s.list(false).await),
            &fifo,
            "FIFO",
        );
        fs::remove_file(&fifo).unwrap();

        // A sparse, huge file: refused without reading it.
        let huge = dir.path().join("apr-huge1.json");
        fs::File::create(&huge).unwrap().set_len(100 << 30).unwrap();
        assert_refused(
            within_5s(&store, async |s| s.get("apr-huge1").await),
            &huge,
            "larger than 1048576",
        );
        fs::remove_file(&huge).unwrap();

        // A damaged request: the listing fails naming it instead of
        // leaving it out, so an approver learns a request may be missing.
        let broken = dir.path().join("apr-bad1.json");
        fs::write(&broken, b"{\"id\": \"apr-bad1\", \"state\": \"pend").unwrap();
        assert_refused(
            within_5s(&store, async |s| s.list(false).await),
            &broken,
            "is not a request",
        );
        assert!(within_5s(&store, async |s| s.list(true).await).is_err());
        fs::remove_file(&broken).unwrap();
        let listed = within_5s(&store, async |s| s.list(false).await).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, State::Pending);
    }

    #[test]
    fn a_request_being_created_is_never_seen_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileStore::open(dir.path()).unwrap());
        for i in 0..50 {
            let id = format!("apr-race{i}");
            let path = dir.path().join(format!("{id}.json"));
            let mut r = request(&id);
            // Large enough that writing it takes several system calls.
            r.statement = "x".repeat(60 * 1024);
            // `get` and `list` take no lock: a reader may look at any time.
            let reader = std::thread::spawn(move || {
                loop {
                    match read(&path) {
                        Ok(Some(r)) => return Ok(r.id),
                        Ok(None) => std::hint::spin_loop(),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            });
            within_5s(&store, async move |s| s.create(&r).await).unwrap();
            assert_eq!(reader.join().unwrap(), Ok(id));
        }
        // A second create of an id leaves the first request as it was.
        let first = fs::read(dir.path().join("apr-race0.json")).unwrap();
        let mut again = request("apr-race0");
        again.statement = "SELECT 1".into();
        let e = within_5s(&store, async move |s| s.create(&again).await)
            .unwrap_err()
            .to_string();
        assert!(e.contains("apr-race0.json") && e.contains("exists"), "{e}");
        assert_eq!(fs::read(dir.path().join("apr-race0.json")).unwrap(), first);
        // Nothing but the requests is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".json"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[tokio::test]
    async fn a_request_too_large_to_read_back_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut big = request("apr-big1");
        big.statement = "\u{1}".repeat(MAX_REQUEST_BYTES as usize / 4);
        let e = store.create(&big).await.unwrap_err().to_string();
        assert!(
            e.contains("apr-big1") && e.contains("more than the 1048576"),
            "{e}"
        );
        assert_eq!(store.get("apr-big1").await.unwrap(), None);
        assert!(store.list(true).await.unwrap().is_empty());
    }
}
