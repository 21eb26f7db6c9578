//! Byte passthrough between client and upstream, with half-close.
use std::{io, time::Duration};

use tokio::{
    io::{AsyncWriteExt, copy_bidirectional_with_sizes},
    net::TcpStream,
};

use super::splice::{Pipe, forward};

/// Buffer per direction of the copying fallback. Larger than tokio's 8 KiB
/// default: on loopback the per-syscall cost dominates.
const BUF: usize = 64 * 1024;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
}

/// A passthrough that ended on an error (a reset, a broken pipe), with what
/// had been delivered until then. Carried inside the returned `io::Error`
/// (same kind as `source`); get it back with [`Interrupted::of`].
#[derive(Debug, thiserror::Error)]
#[error("{source} (after {} bytes up, {} down)", moved.up, moved.down)]
pub struct Interrupted {
    /// Bytes delivered each way before the error.
    pub moved: Transferred,
    /// What ended the session.
    #[source]
    pub source: io::Error,
}

impl Interrupted {
    /// The counts inside an error returned by [`passthrough`], if it has them.
    pub fn of(error: &io::Error) -> Option<&Self> {
        error.get_ref()?.downcast_ref()
    }
}

/// Moves bytes both ways until both sides have finished. When one side
/// shuts down its write half, the other side's write half is shut down too
/// and the opposite direction keeps flowing (half-close). An error in
/// either direction ends both; the error carries the counts so far.
///
/// Bytes go through a kernel pipe per direction with splice(2), never
/// through user memory; if no pipe can be had (EMFILE) it copies instead.
/// Splicing from TCP sockets needs Linux 2.6.25, far below the eBPF hooks'
/// own minimum.
pub async fn passthrough(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
) -> io::Result<Transferred> {
    let (Ok(up_pipe), Ok(down_pipe)) = (Pipe::new(), Pipe::new()) else {
        let (up, down) = copy_bidirectional_with_sizes(client, upstream, BUF, BUF).await?;
        return Ok(Transferred { up, down });
    };
    let mut moved = Transferred::default();
    // try_join: a failed direction drops the other, so a reset client does
    // not leave the upstream half waiting forever on an idle server.
    let ended = tokio::try_join!(
        forward(client, upstream, &up_pipe, &mut moved.up),
        forward(upstream, client, &down_pipe, &mut moved.down),
    );
    match ended {
        Ok(_) => Ok(moved),
        Err(source) => Err(io::Error::new(source.kind(), Interrupted { moved, source })),
    }
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
