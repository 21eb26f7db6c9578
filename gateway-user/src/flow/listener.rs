//! The gateway's listening sockets on 127.0.0.1 and [::1].
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Both loopback listeners of one gateway port.
#[derive(Debug)]
pub struct Listeners {
    pub v4: TcpListener,
    pub v6: TcpListener,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}{hint}", hint = hint(source))]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

fn hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::AddrInUse {
        " (another process holds the port: stop it, or choose another daemon.listen_port, dns_port or udp_port)"
    } else {
        ""
    }
}

/// Binds both listeners. When the host itself is guarded, the kernel
/// refuses binds of the gateway port to everyone but the gateway's own
/// cgroup (so a job cannot squat it while the gateway is down). They are
/// marked too: programs of a release that exempted by mark, still attached
/// while this one starts during an upgrade, let only marked sockets bind.
pub fn bind_listeners(port: u16, mark: u32) -> Result<Listeners, BindError> {
    let v4 = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), mark)?;
    let v6 = bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port)), mark)?;
    Ok(Listeners { v4, v6 })
}

fn bind(addr: SocketAddr, mark: u32) -> Result<TcpListener, BindError> {
    let err = |source| BindError { addr, source };
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_mark(mark).map_err(err)?;
    // Restarts must rebind at once even with connections in TIME_WAIT.
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// UDP sockets on both loopbacks (the DNS listener, the UDP relay),
/// marked like the TCP listeners (the kernel guards their port too).
pub fn bind_udp(
    port: u16,
    mark: u32,
) -> Result<(tokio::net::UdpSocket, tokio::net::UdpSocket), BindError> {
    let udp = |addr: SocketAddr| {
        let err = |source| BindError { addr, source };
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(err)?;
        }
        socket.set_mark(mark).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        socket.bind(&addr.into()).map_err(err)?;
        tokio::net::UdpSocket::from_std(socket.into()).map_err(err)
    };
    Ok((
        udp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?,
        udp(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))?,
    ))
}
