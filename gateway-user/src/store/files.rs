//! The single-host store: `<dir>/<id>.json`, written whole and renamed into place.
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

    /// Whole file, fsynced, then renamed: a crash leaves the old or the new one.
    fn write(&self, path: &Path, request: &Request, new: bool) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(request).map_err(|e| StoreError::Io(e.to_string()))?;
        if new {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io("cannot create", path, e))?;
            f.write_all(&json)
                .map_err(|e| io("cannot write", path, e))?;
            return f.sync_all().map_err(|e| io("cannot sync", path, e));
        }
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
        fs::rename(&tmp, path).map_err(|e| io("cannot replace", path, e))
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

fn read(path: &Path) -> Result<Option<Request>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Io(format!("{} is not a request: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", path, e)),
    }
}

/// Every request file in `dir` that reads, with its path. A file removed
/// or half-written by hand is skipped, not fatal to the whole listing.
fn list(dir: &Path) -> Result<Vec<(PathBuf, Request)>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io("cannot list", dir, e))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        if let Ok(Some(r)) = read(&path) {
            out.push((path, r));
        }
    }
    Ok(out)
}
