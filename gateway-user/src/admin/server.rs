//! The gateway's side of the admin socket: bind it safely, identify each
//! caller by its peer credentials, answer one request.
use std::{
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::protocol::{AdminRequest, AdminResponse, MAX_REQUEST_BYTES};
use super::{AdminHandles, protocol::JobInfo};
use crate::{
    approvals::{Caller, Verdict},
    identity::Binding,
};

fn job_info(b: &Binding) -> JobInfo {
    JobInfo {
        cgroup: b.cgroup.clone(),
        cgroup_id: b.cgroup_id,
        identity: b.job.describe(),
        claims: b.job.claims.clone(),
        expires: humantime::format_rfc3339_seconds(b.until).to_string(),
    }
}

/// A caller that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound socket; dropping it removes the file.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket we bound: on drop the path may name
    /// something else by then (another gateway's socket, a file put there).
    bound: (u64, u64),
}

impl AdminSocket {
    /// Binds `path`: mode 0600 (root only), or 0660 owned by `group`. A
    /// leftover socket of a stopped gateway is replaced; a live one is not.
    pub fn bind(path: &Path, group: Option<u32>) -> Result<AdminSocket, String> {
        let shown = path.display();
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| format!("admin socket directory {}: {e}", dir.display()))?;
        }
        // symlink_metadata: a symlink is not ours to follow or remove, and
        // only a socket may be replaced; a config file named here by mistake
        // must survive.
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(format!(
                    "admin socket {shown} exists and is not a socket: remove it or set a different admin_socket"
                ));
            }
            Ok(_) => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(format!(
                        "admin socket {shown} is in use by another gateway: stop it, or set a different admin_socket"
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| format!("stale admin socket {shown}: {e}"))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("admin socket {shown}: {e}")),
        }
        let listener =
            UnixListener::bind(path).map_err(|e| format!("admin socket {shown}: {e}"))?;
        let bound = std::fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("admin socket {shown}: {e}"))?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("admin socket {shown}: chmod: {e}"))?;
        if let Some(gid) = group {
            nix::unistd::chown(path, None, Some(gid.into()))
                .map_err(|e| format!("admin socket {shown}: chown to gid {gid}: {e}"))?;
        }
        Ok(AdminSocket {
            listener,
            path: path.to_path_buf(),
            bound,
        })
    }

    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        // Only the socket we bound: whatever replaced it is someone else's.
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.file_type().is_socket()
            && (m.dev(), m.ino()) == self.bound
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Answers one caller.
pub async fn serve_connection(stream: UnixStream, services: AdminHandles) {
    let caller = match stream.peer_cred() {
        Ok(cred) => {
            let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
            let pid = pid.and_then(|p| u32::try_from(p).ok());
            tokio::task::spawn_blocking(move || Caller::from_peer(uid, gid, pid))
                .await
                .ok()
        }
        Err(e) => {
            warn!(error = %e, "admin socket: no peer credentials; dropping the caller");
            None
        }
    };
    let Some(caller) = caller else { return };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => AdminResponse::error("no request within 10s"),
        Ok(Err(e)) => AdminResponse::error(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
            AdminResponse::error(format!("request longer than {MAX_REQUEST_BYTES} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
            Ok(request) => answer(&services, &caller, request).await,
            Err(e) => AdminResponse::error(format!("malformed request: {e}")),
        },
    };
    let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
}

async fn answer(services: &AdminHandles, caller: &Caller, request: AdminRequest) -> AdminResponse {
    let approvals = &services.approvals;
    let result = match request {
        AdminRequest::JobBegin { token, cgroup } => {
            let jobs = services.jobs.clone();
            let (uid, pid) = (caller.uid, caller.pid);
            let bound = tokio::task::spawn_blocking(move || {
                jobs.begin(uid, pid, &token, cgroup.as_deref())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            return match bound {
                Ok(b) => {
                    info!(cgroup = %b.cgroup, identity = %b.job.describe(), by = %caller.name, "job bound");
                    AdminResponse {
                        jobs: vec![job_info(&b)],
                        ..AdminResponse::default()
                    }
                }
                Err(e) => {
                    warn!(caller = %caller.name, uid = caller.uid, error = %e, "job begin refused");
                    AdminResponse::error(e)
                }
            };
        }
        AdminRequest::JobEnd { cgroup } => {
            // The state file is written and synced before the answer.
            let jobs = services.jobs.clone();
            let (uid, pid) = (caller.uid, caller.pid);
            let ended = tokio::task::spawn_blocking(move || jobs.end(uid, pid, cgroup.as_deref()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            return match ended {
                Ok(b) => {
                    info!(cgroup = %b.cgroup, identity = %b.job.describe(), by = %caller.name, "job ended");
                    AdminResponse {
                        jobs: vec![job_info(&b)],
                        ..AdminResponse::default()
                    }
                }
                Err(e) => AdminResponse::error(e),
            };
        }
        AdminRequest::JobList => {
            if caller.uid != 0 {
                return AdminResponse::error("only root may list bound jobs");
            }
            let jobs = services.jobs.bindings.list().iter().map(job_info).collect();
            return AdminResponse {
                jobs,
                ..AdminResponse::default()
            };
        }
        AdminRequest::ApprovalsList { all } => approvals.list(caller, all).await,
        AdminRequest::ApprovalsShow { id } => approvals.show(caller, &id).await.map(|r| vec![r]),
        AdminRequest::ApprovalsDecide {
            id,
            approve,
            text,
            grant_secs,
            cgroup_wide,
            digest,
        } => {
            let verdict = if approve {
                Verdict::Approve {
                    comment: text,
                    grant: grant_secs.map(Duration::from_secs),
                    cgroup_wide,
                }
            } else {
                match text {
                    Some(reason) if !reason.trim().is_empty() => Verdict::Deny { reason },
                    _ => return AdminResponse::error("a denial needs a reason (--reason)"),
                }
            };
            let decided = approvals
                .decide(caller, &id, &verdict, digest.as_deref())
                .await;
            if let Err(e) = &decided {
                info!(id, caller = %caller.name, uid = caller.uid, error = %e, "approval decision refused");
            }
            decided.map(|r| vec![r])
        }
    };
    match result {
        Ok(requests) => AdminResponse::requests(requests),
        Err(e) => AdminResponse::error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_in_the_sockets_place_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chokepoint.toml");
        std::fs::write(&path, "not a socket").unwrap();
        let e = AdminSocket::bind(&path, None).err().unwrap();
        assert!(e.contains("exists and is not a socket"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_drop_removes_only_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = AdminSocket::bind(&path, None).unwrap();
        // Someone replaced it while we ran: drop must leave theirs alone.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "theirs").unwrap();
        drop(socket);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "theirs");

        std::fs::remove_file(&path).unwrap();
        drop(AdminSocket::bind(&path, None).unwrap());
        assert!(std::fs::symlink_metadata(&path).is_err());
    }
}
