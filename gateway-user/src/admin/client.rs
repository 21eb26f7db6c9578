//! The CLI's side of the admin socket.
use std::{path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::protocol::{AdminRequest, AdminResponse};

/// A gateway that takes longer than this to answer is reported as stuck.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request; `Err` is a one-line reason (no gateway, permission
/// denied, malformed answer). A refusal by the gateway comes back as
/// `Ok` with [`AdminResponse::error`] set.
pub async fn call(socket: &Path, request: &AdminRequest) -> Result<AdminResponse, String> {
    let shown = socket.display();
    let mut stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "no gateway listens on {shown} ({e}): is chokepoint running, and is this its admin_socket?"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on the admin socket {shown}: run as root or as a member of the gateway's admin_group"
        ),
        _ => format!("cannot connect to the admin socket {shown}: {e}"),
    })?;
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let exchange = async {
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(&mut stream).read_line(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!(
                "the gateway on {shown} did not answer within {}s",
                TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("admin socket {shown}: {e}"))?;
    if answer.is_empty() {
        return Err(format!(
            "the gateway on {shown} closed the connection without an answer"
        ));
    }
    serde_json::from_str(&answer)
        .map_err(|e| format!("the gateway on {shown} sent a malformed answer: {e}"))
}
