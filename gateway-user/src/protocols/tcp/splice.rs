//! One direction of a passthrough moved with splice(2): socket → pipe → socket, never through user memory.
use std::{
    io,
    net::Shutdown,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    unistd::pipe2,
};
use tokio::{io::Interest, net::TcpStream, task::coop};

/// Requested pipe capacity. Each splice moves at most a pipe's worth, so a
/// bigger pipe means fewer syscalls per megabyte; the default 64 KiB costs
/// about as many calls as the buffer copy it replaces. Pages are only
/// referenced while data is in flight, so an idle pipe costs no memory.
const PIPE_SIZE: i32 = 1024 * 1024;

/// Largest amount asked of one splice call; the kernel stops earlier when
/// the socket runs dry or the pipe fills.
const MAX_SPLICE: usize = PIPE_SIZE as usize;

/// The kernel pipe a direction's bytes pass through.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A non-blocking pipe, enlarged when the kernel allows it. Fails only
    /// when no pipe can be created at all (EMFILE, ENFILE).
    pub(super) fn new() -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Best effort: over pipe-max-size or the per-user limit the pipe
        // keeps its default size and still works, only with more calls.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Ok(Self { read, write })
    }
}

/// Moves bytes from `from` to `to` until `from` reaches EOF, then shuts
/// down `to`'s write half so the peer sees the half-close. `moved` counts
/// the bytes delivered to `to`, and stays valid if this future errors or is
/// dropped by the opposite direction's failure.
pub(super) async fn forward(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    moved: &mut u64,
) -> io::Result<()> {
    loop {
        // readable()/writable() do not spend tokio's cooperative budget, so
        // a connection that never runs dry would otherwise hold its worker
        // thread, and the opposite direction, for as long as it lasts.
        coop::consume_budget().await;
        // The pipe is empty here, so EAGAIN can only mean the socket has no
        // data: try_io may then safely clear the read readiness. (With a
        // partly full pipe EAGAIN could mean "pipe full", and clearing the
        // readiness then would wait for an edge that never comes.)
        from.readable().await?;
        let filled = match from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), pipe.write.as_fd(), MAX_SPLICE)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Drain everything before reading again; the pipe being non-empty
        // here makes EAGAIN mean "socket send buffer full", nothing else.
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_fd(), to.as_fd(), left)
            }) {
                // Only an empty pipe gives 0, and this one holds `left` bytes.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    *moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        // The peer already closed both ways: nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// splice(2) between a socket and a pipe, both non-blocking. Returns 0 only
/// at the socket's EOF: an empty pipe or a full one gives EAGAIN instead.
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // libc rather than nix::fcntl::splice: nix only has it behind its
    // `zerocopy` feature, which this crate does not enable.
    // SAFETY: both descriptors are borrowed, so open for the whole call; the
    // offsets are null, as sockets and pipes require; no memory is passed.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    // A negative count is the only failure, and errno says which.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
