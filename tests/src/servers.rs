//! Destination servers on loopback (TCP echo, TCP sink, UDP sink) that count what reaches them.
use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::wait_for;

/// Idle limit of a server-side connection: only there so a broken test
/// cannot leave a thread blocked forever.
const IDLE: Duration = Duration::from_secs(120);

/// What a server does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Writes back every byte until the client's EOF, then shuts down its
    /// own write half (so half-close is observable end to end).
    Echo,
    /// Reads until EOF and discards.
    Sink,
}

/// One finished server-side connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// Who connected: the client itself when it came direct, the gateway's
    /// upstream socket when it was mediated.
    pub peer: SocketAddr,
    /// Bytes read from the client.
    pub bytes_in: u64,
    /// Bytes written back (echo only).
    pub bytes_out: u64,
    /// The client's write side ended with a clean EOF (not a reset).
    pub saw_eof: bool,
    /// Why the connection ended otherwise.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicUsize,
    peers: Mutex<Vec<SocketAddr>>,
    finished: Mutex<Vec<ConnRecord>>,
}

/// A TCP server on `ip:<free port>` running in background threads until dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// An echo server with half-close: echoes until EOF, then shuts down writing.
    pub fn echo(ip: IpAddr) -> Result<Self> {
        Self::start(ip, Kind::Echo)
    }

    /// An echo server on a fixed address and port (a target that names
    /// its port).
    pub fn echo_on(addr: SocketAddr) -> Result<Self> {
        Self::start_on(addr, Kind::Echo)
    }

    /// A server that reads and discards until EOF.
    pub fn sink(ip: IpAddr) -> Result<Self> {
        Self::start(ip, Kind::Sink)
    }

    fn start(ip: IpAddr, kind: Kind) -> Result<Self> {
        Self::start_on(SocketAddr::new(ip, 0), kind)
    }

    fn start_on(at: SocketAddr, kind: Kind) -> Result<Self> {
        let listener =
            TcpListener::bind(at).with_context(|| format!("binding a test server on {at}"))?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("server-{addr}"))
                .spawn(move || accept_loop(listener, kind, &stats, &stop))?
        };
        Ok(Self {
            addr,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Peer addresses of every accepted connection, in accept order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.stats.peers.lock().unwrap().clone()
    }

    /// Connections that have ended, in the order they ended.
    pub fn finished(&self) -> Vec<ConnRecord> {
        self.stats.finished.lock().unwrap().clone()
    }

    /// Waits until at least `n` connections have ended.
    pub fn wait_finished(&self, n: usize, timeout: Duration) -> Result<Vec<ConnRecord>> {
        wait_for(
            &format!("{n} finished connections at {}", self.addr),
            timeout,
            || {
                let done = self.finished();
                (done.len() >= n).then_some(done)
            },
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept. The test process is never in a guarded
        // cgroup, so this connection goes direct.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, kind: Kind, stats: &Arc<Stats>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        stats.peers.lock().unwrap().push(peer);
        stats.accepted.fetch_add(1, Ordering::SeqCst);
        let stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{peer}"))
            .spawn(move || {
                let record = serve(stream, peer, kind);
                stats.finished.lock().unwrap().push(record);
            });
        if spawned.is_err() {
            eprintln!("warning: test server could not spawn a connection thread");
        }
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, kind: Kind) -> ConnRecord {
    let mut record = ConnRecord {
        peer,
        bytes_in: 0,
        bytes_out: 0,
        saw_eof: false,
        error: None,
    };
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(IDLE));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                record.saw_eof = true;
                if kind == Kind::Echo {
                    // Our EOF tells the client everything has been echoed.
                    let _ = stream.shutdown(Shutdown::Write);
                }
                break;
            }
            Ok(n) => {
                record.bytes_in += n as u64;
                if kind == Kind::Echo {
                    if let Err(e) = stream.write_all(&buf[..n]) {
                        record.error = Some(format!("write: {e}"));
                        break;
                    }
                    record.bytes_out += n as u64;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                record.error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    record
}

/// A UDP socket on `ip:<free port>` keeping the datagrams it receives;
/// started with [`UdpSink::echo`], it also answers each one with
/// `<its own address> <payload>`, so a reply names the server that sent it.
#[derive(Debug)]
pub struct UdpSink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    pub fn start(ip: IpAddr) -> Result<Self> {
        Self::bind(SocketAddr::new(ip, 0), false)
    }

    pub fn echo(ip: IpAddr) -> Result<Self> {
        Self::bind(SocketAddr::new(ip, 0), true)
    }

    /// An echo server on a port a policy names.
    pub fn echo_on(addr: SocketAddr) -> Result<Self> {
        Self::bind(addr, true)
    }

    fn bind(addr: SocketAddr, echo: bool) -> Result<Self> {
        let socket = UdpSocket::bind(addr)
            .with_context(|| format!("binding a UDP test server on {addr}"))?;
        let addr = socket.local_addr()?;
        // Short timeout so the thread notices `stop`; not a test timing.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("udp-{addr}"))
                .spawn(move || {
                    let mut buf = [0u8; 65536];
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok((n, from)) = socket.recv_from(&mut buf) {
                            received.lock().unwrap().push(buf[..n].to_vec());
                            if echo {
                                let mut reply = format!("{addr} ").into_bytes();
                                reply.extend_from_slice(&buf[..n]);
                                let _ = socket.send_to(&reply, from);
                            }
                        }
                    }
                })?
        };
        Ok(Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Payloads received so far, in order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
