//! Byte passthrough between client and upstream, with half-close.
use std::{io, time::Duration};

use tokio::{
    io::{AsyncWriteExt, copy_bidirectional_with_sizes},
    net::TcpStream,
};

/// Buffer per direction. Larger than tokio's 8 KiB default: on loopback the
/// per-syscall cost dominates and 64 KiB keeps throughput near direct.
const BUF: usize = 64 * 1024;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
}

/// Copies both ways until both sides have finished. When one side shuts
/// down its write half, the other side's write half is shut down too and
/// the opposite direction keeps flowing (half-close).
pub async fn passthrough(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
) -> io::Result<Transferred> {
    let (up, down) = copy_bidirectional_with_sizes(client, upstream, BUF, BUF).await?;
    Ok(Transferred { up, down })
}

/// Refuses a connection: a reset, so the client fails at once instead of
/// waiting for data that will never come.
pub async fn refuse(mut client: TcpStream) {
    // SO_LINGER 0 makes close() send RST (and, being zero, never blocks).
    if socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .is_err()
    {
        let _ = client.shutdown().await;
    }
}
