//! cp-probe: a network client the tests run inside a guarded cgroup; prints one JSON report line and exits 0 even when the network says no.
//!
//! Its comm is "cp-probe", which policy `processes` globs and flow events see.
//! Exit status 2 means the arguments were wrong, never that a socket failed.
use std::{
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

use chokepoint_tests::probe::{Failure, ProbeReport, fill_pattern, pattern_mismatch};
use socket2::{Domain, Protocol, Socket, Type};

/// Hang guards only: a probe must end even if a peer never answers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(120);
const CHUNK: usize = 64 * 1024;

const USAGE: &str = "usage: cp-probe <command>
  tcp --to ADDR [--from ADDR] [--send N] [--half-close] [--expect-echo] [--own-netns] [--connect-timeout MS]
  serve --bind ADDR --wait MS [--send N]   (accept one connection within MS, write N bytes, close)
  mark --mark M --to ADDR [--send N] [--half-close] [--expect-echo]
  tfo --to ADDR [--send N] [--expect-echo]
  raw
  socket --family 4|6|unix|netlink|packet|alg|vsock|xdp --type stream|dgram|raw|seqpacket --proto N
  ping-socket [--own-netns]
  udp --to ADDR [--and ADDR] [--connect] [--expect-reply] [--lsrr HOP4 | --rthdr HOP6] [--own-netns]
  dns --to ADDR [--and ADDR] [--from ADDR] --name NAME   (A query, unconnected sendto)
  bind --addr ADDR
  loop --to ADDR --count N
  hold --to ADDR --count N [--until-stdin-closes]   (N connections, each echoed once, all kept open until the end)
  stall --to ADDR4 --count N [--md5 [--shutdown]] [--until-stdin-closes]  (N connects whose SYN is dropped: each keeps its kernel record;
        by the egress program for a source route, or with --md5 by the gateway's listener for a TCP_MD5SIG option;
        --shutdown: then shutdown(SHUT_RDWR), which leaves a connecting socket disconnected)
  send-close --to ADDR --send N --count K";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("report serialises")
            );
            ExitCode::SUCCESS
        }
        Err(usage) => {
            eprintln!("cp-probe: {usage}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Parsed `--flag value` options.
struct Opts<'a>(&'a [String]);

impl Opts<'_> {
    fn value(&self, flag: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }

    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }

    fn parse<T: std::str::FromStr>(&self, flag: &str) -> Result<T, String> {
        let v = self.value(flag).ok_or_else(|| format!("missing {flag}"))?;
        v.parse().map_err(|_| format!("bad value for {flag}: {v}"))
    }

    fn parse_or<T: std::str::FromStr>(&self, flag: &str, default: T) -> Result<T, String> {
        if self.value(flag).is_some() {
            self.parse(flag)
        } else {
            Ok(default)
        }
    }
}

fn run(args: &[String]) -> Result<ProbeReport, String> {
    let (command, rest) = args.split_first().ok_or("no command")?;
    let o = Opts(rest);
    let mut report = ProbeReport {
        command: command.clone(),
        pid: std::process::id(),
        // SAFETY: getuid cannot fail.
        uid: unsafe { libc::getuid() },
        ..Default::default()
    };
    // A namespace of the probe's own, loopback up: what a job gets from
    // `unshare -rn`.
    if o.has("--own-netns")
        && command != "ping-socket"
        && let Err(e) = own_netns_with_loopback()
    {
        report.errors.push(e);
        return Ok(report);
    }
    match command.as_str() {
        "tcp" | "mark" => {
            let to: SocketAddr = o.parse("--to")?;
            let mark = if command == "mark" {
                Some(o.parse::<u32>("--mark")?)
            } else {
                None
            };
            let exchange = Exchange {
                send: o.parse_or("--send", 0)?,
                half_close: o.has("--half-close"),
                expect_echo: o.has("--expect-echo"),
                from: if o.has("--from") {
                    Some(o.parse("--from")?)
                } else {
                    None
                },
                connect_timeout: Duration::from_millis(
                    o.parse_or("--connect-timeout", CONNECT_TIMEOUT.as_millis() as u64)?,
                ),
            };
            tcp(&mut report, to, mark, &exchange);
        }
        "tfo" => {
            let exchange = Exchange {
                send: o.parse_or("--send", 0)?,
                half_close: false,
                expect_echo: o.has("--expect-echo"),
                from: None,
                connect_timeout: CONNECT_TIMEOUT,
            };
            tfo(&mut report, o.parse("--to")?, &exchange);
        }
        "socket" => {
            let family = match o.value("--family") {
                Some("4") => libc::AF_INET,
                Some("6") => libc::AF_INET6,
                Some("unix") => libc::AF_UNIX,
                Some("netlink") => libc::AF_NETLINK,
                Some("packet") => libc::AF_PACKET,
                Some("alg") => libc::AF_ALG,
                Some("vsock") => libc::AF_VSOCK,
                Some("xdp") => libc::AF_XDP,
                other => return Err(format!("bad --family {other:?}")),
            };
            let ty = match o.value("--type") {
                Some("stream") => libc::SOCK_STREAM,
                Some("dgram") => libc::SOCK_DGRAM,
                Some("raw") => libc::SOCK_RAW,
                Some("seqpacket") => libc::SOCK_SEQPACKET,
                other => return Err(format!("bad --type {other:?}")),
            };
            socket_only(&mut report, family, ty, o.parse("--proto")?);
        }
        "raw" => socket_only(
            &mut report,
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        ),
        "ping-socket" => {
            if o.has("--own-netns")
                && let Err(e) = own_netns_with_ping()
            {
                report.errors.push(e);
                return Ok(report);
            }
            socket_only(
                &mut report,
                libc::AF_INET,
                libc::SOCK_DGRAM,
                libc::IPPROTO_ICMP,
            );
        }
        "udp" => {
            let mut to = vec![o.parse("--to")?];
            if o.has("--and") {
                to.push(o.parse("--and")?);
            }
            let route = if o.has("--lsrr") {
                Some(SourceRoute::V4(o.parse("--lsrr")?))
            } else if o.has("--rthdr") {
                Some(SourceRoute::V6(o.parse("--rthdr")?))
            } else {
                None
            };
            udp(
                &mut report,
                &to,
                o.has("--connect"),
                o.has("--expect-reply"),
                route,
            );
        }
        "dns" => {
            let mut to = vec![o.parse("--to")?];
            if o.has("--and") {
                to.push(o.parse("--and")?);
            }
            let name = o.value("--name").ok_or("dns needs --name")?;
            let from = if o.has("--from") {
                Some(o.parse("--from")?)
            } else {
                None
            };
            dns_query(&mut report, &to, from, name);
        }
        "serve" => serve(
            &mut report,
            o.parse("--bind")?,
            Duration::from_millis(o.parse("--wait")?),
            o.parse_or("--send", 0)?,
        ),
        "bind" => {
            let addr: SocketAddr = o.parse("--addr")?;
            match TcpListener::bind(addr) {
                Ok(_) => report.ok = true,
                Err(e) => report.errors.push(Failure::from_io("bind", &e)),
            }
        }
        "send-close" => send_close(
            &mut report,
            o.parse("--to")?,
            o.parse("--send")?,
            o.parse("--count")?,
        ),
        "loop" => repeat(&mut report, o.parse("--to")?, o.parse("--count")?),
        "hold" | "stall" => {
            let (to, count) = (o.parse("--to")?, o.parse("--count")?);
            let open: Vec<Socket> = if command == "hold" {
                hold(&mut report, to, count)
                    .into_iter()
                    .map(Socket::from)
                    .collect()
            } else {
                stall(&mut report, to, count, o.has("--md5"), o.has("--shutdown"))
            };
            if o.has("--until-stdin-closes") {
                // Tells the test all were tried; it closes stdin when done.
                println!("held");
                let _ = std::io::stdout().flush();
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            }
            drop(open);
        }
        other => return Err(format!("unknown command {other}")),
    }
    Ok(report)
}

struct Exchange {
    send: u64,
    half_close: bool,
    expect_echo: bool,
    /// Bind the client end here first (`--from`).
    from: Option<SocketAddr>,
    connect_timeout: Duration,
}

/// A source route the datagrams carry (unprivileged socket options).
enum SourceRoute {
    /// `IP_OPTIONS` with a loose source route through this hop.
    V4(std::net::Ipv4Addr),
    /// `IPV6_RTHDR`: a segment routing header through this hop.
    V6(std::net::Ipv6Addr),
}

impl SourceRoute {
    fn apply(&self, fd: i32) -> Result<(), Failure> {
        let (level, name, bytes, what) = match self {
            SourceRoute::V4(hop) => {
                // LSRR (type 131), length 7, pointer 4, the hop; then EOL.
                let mut o = vec![0x83, 7, 4];
                o.extend_from_slice(&hop.octets());
                o.push(0);
                (
                    libc::IPPROTO_IP,
                    libc::IP_OPTIONS,
                    o,
                    "setsockopt(IP_OPTIONS)",
                )
            }
            SourceRoute::V6(hop) => {
                // Segment routing header (type 4) with one segment: next
                // header (set by the kernel), length in 8-byte units past
                // the first 8, type, segments left, last entry, flags, tag.
                let mut h = vec![0, 2, 4, 0, 0, 0, 0, 0];
                h.extend_from_slice(&hop.octets());
                (
                    libc::IPPROTO_IPV6,
                    libc::IPV6_RTHDR,
                    h,
                    "setsockopt(IPV6_RTHDR)",
                )
            }
        };
        // SAFETY: a valid fd and a buffer of the given length.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                bytes.as_ptr().cast(),
                bytes.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Failure::from_io(what, &io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Connect, send the pattern while reading concurrently (a 100 MB echo
/// would deadlock otherwise), optionally half-close, read back.
fn tcp(report: &mut ProbeReport, to: SocketAddr, mark: Option<u32>, x: &Exchange) {
    let socket = match Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) => return report.errors.push(Failure::from_io("socket", &e)),
    };
    if let Some(mark) = mark
        && let Err(e) = socket.set_mark(mark)
    {
        return report
            .errors
            .push(Failure::from_io("setsockopt(SO_MARK)", &e));
    }
    if let Some(from) = x.from {
        let _ = socket.set_reuse_address(true);
        if let Err(e) = socket.bind(&from.into()) {
            return report.errors.push(Failure::from_io("bind", &e));
        }
    }
    if let Err(e) = socket.connect_timeout(&to.into(), x.connect_timeout) {
        return report.errors.push(Failure::from_io("connect", &e));
    }
    report.connected = true;
    let stream: TcpStream = socket.into();
    report.local_addr = stream.local_addr().ok().map(|a| a.to_string());
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));

    let writer = {
        let mut w = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => return report.errors.push(Failure::from_io("dup", &e)),
        };
        let (send, half_close) = (x.send, x.half_close);
        std::thread::spawn(move || -> (u64, Option<Failure>) {
            let mut buf = vec![0u8; CHUNK];
            let mut sent = 0u64;
            while sent < send {
                let n = (send - sent).min(CHUNK as u64) as usize;
                fill_pattern(sent, &mut buf[..n]);
                if let Err(e) = w.write_all(&buf[..n]) {
                    return (sent, Some(Failure::from_io("write", &e)));
                }
                sent += n as u64;
            }
            if half_close && let Err(e) = w.shutdown(Shutdown::Write) {
                return (sent, Some(Failure::from_io("shutdown(write)", &e)));
            }
            (sent, None)
        })
    };

    let mut echo_intact = true;
    let mut read_error = None;
    if x.half_close || x.expect_echo {
        let mut r = &stream;
        let mut buf = vec![0u8; CHUNK];
        // Without half-close the peer never sends EOF: stop at the echo.
        let want = if x.half_close { u64::MAX } else { x.send };
        while report.received < want {
            match r.read(&mut buf) {
                Ok(0) => {
                    report.eof = true;
                    break;
                }
                Ok(n) => {
                    if x.expect_echo
                        && echo_intact
                        && pattern_mismatch(report.received, &buf[..n]).is_some()
                    {
                        echo_intact = false;
                    }
                    report.received += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    read_error = Some(Failure::from_io("read", &e));
                    break;
                }
            }
        }
        if read_error.is_some() {
            // Unblocks the writer if the peer stopped reading.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    let (sent, write_error) = writer
        .join()
        .unwrap_or((0, Some(Failure::other("write", "writer thread panicked"))));
    report.sent = sent;
    report.errors.extend(read_error);
    report.errors.extend(write_error);
    if x.expect_echo {
        let complete = report.received == x.send;
        if !complete && report.errors.is_empty() {
            report.errors.push(Failure::other(
                "read",
                format!("EOF after {} of {} echoed bytes", report.received, x.send),
            ));
        }
        report.echo_ok = Some(echo_intact && complete);
    }
    report.ok = report.errors.is_empty() && report.echo_ok != Some(false);
}

/// A server in a job: listens on `bind`, accepts one connection within
/// `wait`, writes `send` bytes of the pattern and closes. A job's accepted
/// connections pass no connect or send hook, only the egress program.
fn serve(report: &mut ProbeReport, bind: SocketAddr, wait: Duration, send: u64) {
    let listener = match TcpListener::bind(bind) {
        Ok(l) => l,
        Err(e) => return report.errors.push(Failure::from_io("bind", &e)),
    };
    if let Err(e) = listener.set_nonblocking(true) {
        return report.errors.push(Failure::from_io("fcntl", &e));
    }
    let deadline = std::time::Instant::now() + wait;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return report
                        .errors
                        .push(Failure::other("accept", "no connection in time"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return report.errors.push(Failure::from_io("accept", &e)),
        }
    };
    report.connected = true;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; send as usize];
    fill_pattern(0, &mut buf);
    match stream.write_all(&buf) {
        Ok(()) => {
            report.sent = send;
            report.ok = true;
        }
        Err(e) => report.errors.push(Failure::from_io("write", &e)),
    }
}

/// TCP Fast Open: the connect happens inside `sendto(MSG_FASTOPEN)`, not
/// `connect()`, a path a guard could miss. Sends at most one chunk.
fn tfo(report: &mut ProbeReport, to: SocketAddr, x: &Exchange) {
    let socket = match Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP)) {
        Ok(s) => s,
        Err(e) => return report.errors.push(Failure::from_io("socket", &e)),
    };
    let mut buf = vec![0u8; (x.send as usize).min(CHUNK)];
    fill_pattern(0, &mut buf);
    let _ = socket.set_read_timeout(Some(IO_TIMEOUT));
    match socket.send_to_with_flags(&buf, &to.into(), libc::MSG_FASTOPEN) {
        Ok(n) => {
            report.connected = true;
            report.sent = n as u64;
        }
        Err(e) => {
            return report
                .errors
                .push(Failure::from_io("sendto(MSG_FASTOPEN)", &e));
        }
    }
    let mut stream: TcpStream = socket.into();
    report.local_addr = stream.local_addr().ok().map(|a| a.to_string());
    if x.expect_echo {
        let mut back = vec![0u8; report.sent as usize];
        let mut got = 0;
        while got < back.len() {
            match stream.read(&mut back[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    report.errors.push(Failure::from_io("read", &e));
                    break;
                }
            }
        }
        report.received = got as u64;
        let intact = got == back.len() && pattern_mismatch(0, &back).is_none();
        if !intact && report.errors.is_empty() {
            report.errors.push(Failure::other(
                "read",
                format!("EOF after {got} of {} echoed bytes", back.len()),
            ));
        }
        report.echo_ok = Some(intact);
    }
    report.ok = report.errors.is_empty();
}

/// Creates a socket with raw `socket(2)` arguments and closes it.
fn socket_only(report: &mut ProbeReport, domain: i32, ty: i32, proto: i32) {
    // SAFETY: plain syscalls on an fd we own.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        report
            .errors
            .push(Failure::from_io("socket", &io::Error::last_os_error()));
    } else {
        unsafe { libc::close(fd) };
        report.ok = true;
    }
}

/// Moves the probe into a network namespace of its own and opens its ping
/// group range, so `socket(SOCK_DGRAM, IPPROTO_ICMP)` is refused only by
/// Chokepoint. The host's namespace and settings are untouched; the
/// namespace disappears when the probe exits.
fn own_netns_with_ping() -> Result<(), Failure> {
    // SAFETY: unshare of the calling (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(Failure::from_io(
            "unshare(CLONE_NEWNET)",
            &io::Error::last_os_error(),
        ));
    }
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        .map_err(|e| Failure::from_io("write ping_group_range", &e))
}

/// Moves the probe into a network namespace of its own with its loopback
/// up, so a connect there could reach a listener in that namespace.
fn own_netns_with_loopback() -> Result<(), Failure> {
    // SAFETY: unshare of the calling (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(Failure::from_io(
            "unshare(CLONE_NEWNET)",
            &io::Error::last_os_error(),
        ));
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| Failure::from_io("ip link set lo up", &e))?;
    if !up.success() {
        return Err(Failure::other("ip link set lo up", format!("{up}")));
    }
    Ok(())
}

/// An unconnected UDP socket of `to`'s family, on an ephemeral port.
fn udp_socket_for(to: SocketAddr) -> Result<UdpSocket, Failure> {
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    UdpSocket::bind(any).map_err(|e| Failure::from_io("bind", &e))
}

fn udp(
    report: &mut ProbeReport,
    to: &[SocketAddr],
    connect: bool,
    expect_reply: bool,
    route: Option<SourceRoute>,
) {
    let socket = match udp_socket_for(to[0]) {
        Ok(s) => s,
        Err(f) => return report.errors.push(f),
    };
    if let Some(route) = route
        && let Err(f) = route.apply(std::os::fd::AsRawFd::as_raw_fd(&socket))
    {
        return report.errors.push(f);
    }
    let payload = b"cp-probe udp";
    for &dst in to {
        let result = if connect {
            match socket.connect(dst) {
                Ok(()) => socket
                    .send(payload)
                    .map_err(|e| Failure::from_io("send", &e)),
                Err(e) => Err(Failure::from_io("connect", &e)),
            }
        } else {
            socket
                .send_to(payload, dst)
                .map_err(|e| Failure::from_io("sendto", &e))
        };
        match result {
            Ok(n) => report.sent += n as u64,
            Err(f) => return report.errors.push(f),
        }
    }
    if expect_reply {
        // Generous: a lost reply fails the test by its content, not by time.
        let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 2048];
        for _ in to {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    report.received += n as u64;
                    report.replies.push((
                        from.to_string(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    ));
                }
                Err(e) => return report.errors.push(Failure::from_io("recv", &e)),
            }
        }
    }
    report.ok = true;
}

/// Asks every server in `to` for `name`'s A records from one unconnected
/// socket, the way musl's resolver does, and reports the first answer as
/// `(source, "<rcode> <address>...")`.
fn dns_query(report: &mut ProbeReport, to: &[SocketAddr], from: Option<SocketAddr>, name: &str) {
    use hickory_proto::{
        op::{Message, MessageType, Query},
        rr::{Name, RData, RecordType},
    };
    let Ok(qname) = Name::from_ascii(name) else {
        return report
            .errors
            .push(Failure::other("name", format!("bad name {name:?}")));
    };
    let mut query = Message::new();
    query
        .set_id(0x4350)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname, RecordType::A));
    let bytes = query.to_vec().expect("a query serialises");
    let socket = match from.map_or_else(
        || udp_socket_for(to[0]),
        |from| UdpSocket::bind(from).map_err(|e| Failure::from_io("bind", &e)),
    ) {
        Ok(s) => s,
        Err(f) => return report.errors.push(f),
    };
    for &dst in to {
        match socket.send_to(&bytes, dst) {
            Ok(n) => report.sent += n as u64,
            Err(e) => return report.errors.push(Failure::from_io("sendto", &e)),
        }
    }
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            report.received = n as u64;
            let summary = match Message::from_vec(&buf[..n]) {
                Ok(answer) => {
                    let mut text = answer.response_code().to_string();
                    for record in answer.answers() {
                        if let RData::A(a) = record.data() {
                            text.push_str(&format!(" {a}"));
                        }
                    }
                    text
                }
                Err(e) => format!("undecodable answer: {e}"),
            };
            report.replies.push((from.to_string(), summary));
            report.ok = true;
        }
        Err(e) => report.errors.push(Failure::from_io("recv", &e)),
    }
}

/// `count` fire-and-forget connections: connect, write `send` bytes,
/// close at once (like `printf ... | nc -q0 host port`), never reading.
fn send_close(report: &mut ProbeReport, to: SocketAddr, send: usize, count: u64) {
    let mut out = vec![0u8; send];
    fill_pattern(0, &mut out);
    for _ in 0..count {
        let result = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
            .map_err(|e| Failure::from_io("connect", &e))
            .and_then(|mut s| s.write_all(&out).map_err(|e| Failure::from_io("write", &e)));
        match result {
            Ok(()) => {
                report.successes += 1;
                report.sent += send as u64;
            }
            Err(f) => {
                report.failures += 1;
                if report.errors.len() < 5 {
                    report.errors.push(f);
                }
            }
        }
    }
    report.ok = report.failures == 0;
}

/// `count` sequential short connections; keeps the first few failures.
fn repeat(report: &mut ProbeReport, to: SocketAddr, count: u64) {
    let mut out = [0u8; 16];
    fill_pattern(0, &mut out);
    for _ in 0..count {
        match one_exchange(to, &out) {
            Ok(()) => report.successes += 1,
            Err(f) => {
                report.failures += 1;
                if report.errors.len() < 5 {
                    report.errors.push(f);
                }
            }
        }
    }
    report.ok = report.failures == 0;
}

/// `count` connections opened one after another, each echoed once and
/// kept open until all were tried: how many a job may have open at once.
fn hold(report: &mut ProbeReport, to: SocketAddr, count: u64) -> Vec<TcpStream> {
    let mut out = [0u8; 16];
    fill_pattern(0, &mut out);
    keep_open(report, count, || open_exchange(to, &out))
}

/// `count` tries of `open`, counted in `report`; what opened is returned.
fn keep_open<T>(
    report: &mut ProbeReport,
    count: u64,
    mut open: impl FnMut() -> Result<T, Failure>,
) -> Vec<T> {
    let mut kept = Vec::new();
    for _ in 0..count {
        match open() {
            Ok(s) => {
                report.successes += 1;
                kept.push(s);
            }
            Err(f) => {
                report.failures += 1;
                if report.errors.len() < 5 {
                    report.errors.push(f);
                }
            }
        }
    }
    report.ok = report.failures == 0;
    kept
}

/// `count` IPv4 connects whose SYN never leaves: each socket carries a
/// source route, which the egress program drops, so the connect stays in
/// `SYN_SENT` (then closed, still open) and keeps the record it made for
/// as long as the socket is open. Kept open until all were tried.
fn stall(
    report: &mut ProbeReport,
    to: SocketAddr,
    count: u64,
    md5: bool,
    shutdown: bool,
) -> Vec<Socket> {
    raise_fd_limit(count + 64);
    let SocketAddr::V4(to4) = to else {
        report
            .errors
            .push(Failure::other("stall", "IPv4 destinations only"));
        return Vec::new();
    };
    keep_open(report, count, || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| Failure::from_io("socket", &e))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        if md5 {
            md5_key_for_loopback(fd)?;
        } else {
            SourceRoute::V4(*to4.ip()).apply(fd)?;
        }
        s.set_nonblocking(true)
            .map_err(|e| Failure::from_io("set_nonblocking", &e))?;
        match s.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(Failure::from_io("connect", &e)),
        }
        if shutdown {
            s.shutdown(Shutdown::Both)
                .map_err(|e| Failure::from_io("shutdown", &e))?;
        }
        Ok(s)
    })
}

/// A `TCP_MD5SIG` key for 127.0.0.1, where the kernel redirects the
/// connect: the SYN carries an MD5 option, which a listener without keys
/// (the gateway's) drops without an answer. Needs no privilege.
fn md5_key_for_loopback(fd: i32) -> Result<(), Failure> {
    // struct tcp_md5sig (linux/tcp.h; libc has no binding): a 128-byte
    // sockaddr_storage, flags, prefix length, key length (u16), ifindex
    // (i32), then an 80-byte key.
    let mut sig = [0u8; 216];
    sig[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    sig[4..8].copy_from_slice(&[127, 0, 0, 1]);
    let key = b"chokepoint-test";
    sig[130..132].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    sig[136..136 + key.len()].copy_from_slice(key);
    // SAFETY: a valid fd and the buffer with its length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            sig.as_ptr().cast(),
            sig.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Failure::from_io(
            "setsockopt(TCP_MD5SIG)",
            &io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Lets this process hold `n` descriptors (as far as the hard limit goes).
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit buffer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < n {
        lim.rlim_cur = n.min(lim.rlim_max);
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn one_exchange(to: SocketAddr, out: &[u8; 16]) -> Result<(), Failure> {
    open_exchange(to, out).map(drop)
}

fn open_exchange(to: SocketAddr, out: &[u8; 16]) -> Result<TcpStream, Failure> {
    let mut s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
        .map_err(|e| Failure::from_io("connect", &e))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    s.write_all(out)
        .map_err(|e| Failure::from_io("write", &e))?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back)
        .map_err(|e| Failure::from_io("read", &e))?;
    if &back != out {
        return Err(Failure::other("read", "echo differs"));
    }
    Ok(s)
}
