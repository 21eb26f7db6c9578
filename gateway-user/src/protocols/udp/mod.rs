//! Plain UDP, relayed: datagrams pass through once their flow (one sender
//! socket and destination) is allowed, like TCP bytes once a connection
//! is. This module holds the socket plumbing; `daemon::udp` decides, logs
//! and records.
//!
//! The kernel marks each datagram it redirects to the relay (see
//! `gateway_common::UdpPeerKey`), and the relay reads the mark with
//! `SO_RCVMARK` to find who sent it and where it was going.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};

/// Asks the kernel to hand each datagram's packet mark to `recv_marked`.
pub fn enable_marks(socket: &impl AsFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd, and SO_RCVMARK takes an int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVMARK,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One datagram: its length in `buf`, its sender, and its packet mark (0
/// when it carried none).
pub async fn recv_marked(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, u32)> {
    loop {
        socket.readable().await?;
        match socket.try_io(Interest::READABLE, || recv_once(socket, buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn recv_once(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, u32)> {
    let capacity = buf.len();
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(u32);
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_TRUNC,
    )
    .map_err(io::Error::from)?;
    let mut mark = 0;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Unknown(unknown) = cmsg
            && unknown.cmsg_header.cmsg_level == libc::SOL_SOCKET
            && unknown.cmsg_header.cmsg_type == libc::SO_MARK
            && let Ok(bytes) = <[u8; 4]>::try_from(unknown.data_bytes.as_slice())
        {
            mark = u32::from_ne_bytes(bytes);
        }
    }
    let peer = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| io::Error::other("datagram without an IP sender address"))?;
    if msg.bytes > capacity {
        // MSG_TRUNC reports the datagram's real length: relaying a cut
        // datagram would hand the destination something the job never sent.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "datagram of {} bytes from {peer} is larger than the receive buffer",
                msg.bytes
            ),
        ));
    }
    Ok((msg.bytes, peer, mark))
}

/// A socket to `dst` carrying `mark`, which the kernel lets through
/// instead of redirecting it back to the gateway.
pub fn connect_upstream(dst: SocketAddr, mark: u32) -> io::Result<UdpSocket> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_mark(mark)?;
    socket.set_nonblocking(true)?;
    socket.connect(&dst.into())?;
    UdpSocket::from_std(socket.into())
}
