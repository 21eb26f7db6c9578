//! Connecting to the original destination with the exemption mark.
use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `dst` from a socket carrying `mark`, which the connect hook
/// lets through instead of redirecting back to the gateway.
pub async fn connect_upstream(dst: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(mark)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(dst).await
}
