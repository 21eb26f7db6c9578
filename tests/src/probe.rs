//! The cp-probe client's report format, its byte pattern, and a builder that runs it and parses the report.
use std::{
    io,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::run_with_timeout;

/// Hang guard for one probe run (the 10,000-connection loop included).
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);

/// One failed system call, as the probe saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed: "socket", "setsockopt(SO_MARK)", "connect", "write", "read", "sendto", "bind", ...
    pub op: String,
    /// `errno`, when the error came from the kernel.
    pub errno: Option<i32>,
    /// `std::io::ErrorKind` as text ("ConnectionRefused", "PermissionDenied", ...).
    pub kind: String,
    pub message: String,
}

impl Failure {
    pub fn from_io(op: &str, e: &io::Error) -> Self {
        Self {
            op: op.to_owned(),
            errno: e.raw_os_error(),
            kind: format!("{:?}", e.kind()),
            message: e.to_string(),
        }
    }

    /// A failure that is not an errno (e.g. EOF before the expected bytes).
    pub fn other(op: &str, message: impl Into<String>) -> Self {
        Self {
            op: op.to_owned(),
            errno: None,
            kind: "Other".to_owned(),
            message: message.into(),
        }
    }
}

/// What one cp-probe run printed: a single JSON line on stdout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The subcommand ("tcp", "raw", ...).
    pub command: String,
    /// The probe's own pid and uid, to match against flow events.
    pub pid: u32,
    pub uid: u32,
    /// The operation fully did what it was asked to.
    pub ok: bool,
    /// TCP: `connect()` returned success.
    #[serde(default)]
    pub connected: bool,
    /// TCP: the client's local address after connect.
    #[serde(default)]
    pub local_addr: Option<String>,
    /// TCP: bytes written.
    #[serde(default)]
    pub sent: u64,
    /// TCP: bytes read.
    #[serde(default)]
    pub received: u64,
    /// TCP: reading ended at a clean EOF.
    #[serde(default)]
    pub eof: bool,
    /// TCP with `--expect-echo`: every byte came back, in order, unchanged.
    #[serde(default)]
    pub echo_ok: Option<bool>,
    /// `loop`: connections that completed their exchange, and those that did not.
    #[serde(default)]
    pub successes: u64,
    #[serde(default)]
    pub failures: u64,
    /// UDP with `--expect-reply`: each reply's source address (as
    /// `recvfrom` reported it) and payload, in arrival order.
    #[serde(default)]
    pub replies: Vec<(String, String)>,
    /// Every failure, in the order met (for `loop`, the first few).
    #[serde(default)]
    pub errors: Vec<Failure>,
}

impl ProbeReport {
    /// The first failure of step `op`, if any.
    pub fn error(&self, op: &str) -> Option<&Failure> {
        self.errors.iter().find(|f| f.op == op)
    }

    /// errno of the first failure of step `op`.
    pub fn errno(&self, op: &str) -> Option<i32> {
        self.error(op).and_then(|f| f.errno)
    }
}

/// Byte `offset` of the deterministic stream the probe sends. The period
/// (251, a prime, perturbed every 65521 bytes) makes a dropped, duplicated or
/// reordered chunk show up as a mismatch.
pub fn pattern_byte(offset: u64) -> u8 {
    ((offset % 251) as u8).wrapping_add((offset / 65521) as u8)
}

/// Fills `buf` with the pattern starting at `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// Index of the first byte of `buf` that differs from the pattern at `offset`.
pub fn pattern_mismatch(offset: u64, buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .position(|(i, &b)| b != pattern_byte(offset + i as u64))
}

/// Arguments for one cp-probe run; [`run`](Self::run) executes them with a
/// prepared `Command` (inside a test cgroup, as another user, or plain).
#[derive(Clone, Debug)]
pub struct ProbeArgs(Vec<String>);

impl ProbeArgs {
    fn new(args: &[&str]) -> Self {
        Self(args.iter().map(|s| (*s).to_owned()).collect())
    }

    fn with(mut self, args: &[&str]) -> Self {
        self.0.extend(args.iter().map(|s| (*s).to_owned()));
        self
    }

    /// TCP connect to `to`; add [`send`](Self::send), [`half_close`](Self::half_close), [`expect_echo`](Self::expect_echo).
    pub fn tcp(to: SocketAddr) -> Self {
        Self::new(&["tcp", "--to", &to.to_string()])
    }

    /// TCP connect from a socket carrying `SO_MARK = mark`.
    pub fn mark(mark: u32, to: SocketAddr) -> Self {
        Self::new(&["mark", "--mark", &mark.to_string(), "--to", &to.to_string()])
    }

    /// Send `n` pattern bytes after connecting.
    pub fn send(self, n: u64) -> Self {
        self.with(&["--send", &n.to_string()])
    }

    /// Shut down writing after sending, then read until EOF.
    pub fn half_close(self) -> Self {
        self.with(&["--half-close"])
    }

    /// Read the sent bytes back and check them.
    pub fn expect_echo(self) -> Self {
        self.with(&["--expect-echo"])
    }

    /// `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)`.
    pub fn raw() -> Self {
        Self::new(&["raw"])
    }

    /// TCP Fast Open: connect and send in one `sendto(MSG_FASTOPEN)`.
    pub fn tfo(to: SocketAddr) -> Self {
        Self::new(&["tfo", "--to", &to.to_string()])
    }

    /// `socket(family, type, proto)` then close; `family` is 4 or 6, `ty`
    /// one of "stream", "dgram", "raw", "seqpacket".
    pub fn socket(family: u8, ty: &str, proto: i32) -> Self {
        Self::socket_of(&family.to_string(), ty, proto)
    }

    /// The same with a family by name: "4", "6", "unix", "netlink",
    /// "packet", "alg", "vsock" or "xdp".
    pub fn socket_of(family: &str, ty: &str, proto: i32) -> Self {
        Self::new(&[
            "socket",
            "--family",
            family,
            "--type",
            ty,
            "--proto",
            &proto.to_string(),
        ])
    }

    /// `socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)` in a fresh network
    /// namespace of the probe's own whose `ping_group_range` admits every
    /// group, so the kernel's group check cannot be what refuses it (the
    /// host's range is left alone).
    pub fn ping_socket() -> Self {
        Self::new(&["ping-socket", "--own-netns"])
    }

    /// A UDP datagram to `to` with `sendto()`.
    pub fn udp(to: SocketAddr) -> Self {
        Self::new(&["udp", "--to", &to.to_string()])
    }

    /// A UDP `connect()` to `to`, then `send()`.
    pub fn udp_connect(to: SocketAddr) -> Self {
        Self::new(&["udp", "--to", &to.to_string(), "--connect"])
    }

    /// `dns`: an A query for `name` to `to` over an unconnected socket.
    pub fn dns(to: SocketAddr, name: &str) -> Self {
        Self::new(&["dns", "--to", &to.to_string(), "--name", name])
    }

    /// TCP and UDP: from a network namespace of the probe's own (loopback
    /// up), as a job gets with `unshare -rn`.
    pub fn own_netns(self) -> Self {
        self.with(&["--own-netns"])
    }

    /// TCP: bind the client end to `from` before connecting; DNS: send from `from`.
    pub fn from(self, from: SocketAddr) -> Self {
        self.with(&["--from", &from.to_string()])
    }

    /// UDP: the datagrams carry a loose source route through `hop`
    /// (`IP_OPTIONS`).
    pub fn lsrr(self, hop: std::net::Ipv4Addr) -> Self {
        self.with(&["--lsrr", &hop.to_string()])
    }

    /// UDP: the datagrams carry a routing header through `hop`
    /// (`IPV6_RTHDR`).
    pub fn rthdr(self, hop: std::net::Ipv6Addr) -> Self {
        self.with(&["--rthdr", &hop.to_string()])
    }

    /// UDP: wait for one reply per destination and report them.
    pub fn expect_reply(self) -> Self {
        self.with(&["--expect-reply"])
    }

    /// UDP (unconnected): from the same socket, also send to `to`.
    pub fn and(self, to: SocketAddr) -> Self {
        self.with(&["--and", &to.to_string()])
    }

    /// Listen on `bind`, accept one connection within `wait`, write `bytes`
    /// and close.
    pub fn serve(bind: SocketAddr, wait: std::time::Duration, bytes: u64) -> Self {
        Self::new(&[
            "serve",
            "--bind",
            &bind.to_string(),
            "--wait",
            &wait.as_millis().to_string(),
            "--send",
            &bytes.to_string(),
        ])
    }

    /// Give up a TCP connect after `timeout` (the default is a hang guard).
    pub fn connect_timeout(self, timeout: std::time::Duration) -> Self {
        self.with(&["--connect-timeout", &timeout.as_millis().to_string()])
    }

    /// Bind a TCP listener on `addr`.
    pub fn bind(addr: SocketAddr) -> Self {
        Self::new(&["bind", "--addr", &addr.to_string()])
    }

    /// `count` sequential connect + write `bytes` + immediate close.
    pub fn send_close(to: SocketAddr, bytes: u64, count: u64) -> Self {
        Self::new(&[
            "send-close",
            "--to",
            &to.to_string(),
            "--send",
            &bytes.to_string(),
            "--count",
            &count.to_string(),
        ])
    }

    /// `count` sequential connect + 16-byte echo + close.
    pub fn repeat(to: SocketAddr, count: u64) -> Self {
        Self::new(&[
            "loop",
            "--to",
            &to.to_string(),
            "--count",
            &count.to_string(),
        ])
    }

    /// `count` connections, each echoed once, all kept open until the last
    /// was tried.
    pub fn hold(to: SocketAddr, count: u64) -> Self {
        Self::new(&[
            "hold",
            "--to",
            &to.to_string(),
            "--count",
            &count.to_string(),
        ])
    }

    /// Runs `cmd` (a command for the cp-probe binary) with these arguments.
    pub fn run(self, mut cmd: Command) -> Result<ProbeReport> {
        cmd.args(&self.0).stdin(Stdio::null());
        let out = run_with_timeout(&mut cmd, PROBE_TIMEOUT)
            .with_context(|| format!("cp-probe {:?}", self.0))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "cp-probe {:?} exited with {}; stdout: {stdout}; stderr: {}",
                self.0,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .with_context(|| format!("cp-probe {:?} printed {stdout:?}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_detects_shifts() {
        let mut a = vec![0u8; 300_000];
        fill_pattern(0, &mut a);
        assert_eq!(pattern_mismatch(0, &a), None);
        assert!(pattern_mismatch(1, &a).is_some());
        assert!(pattern_mismatch(251, &a).is_some());
        assert_eq!(pattern_mismatch(1000, &a[1000..]), None);
    }

    #[test]
    fn report_round_trips() {
        let r = ProbeReport {
            command: "tcp".into(),
            errors: vec![Failure::from_io(
                "connect",
                &io::Error::from_raw_os_error(libc::ECONNREFUSED),
            )],
            ..Default::default()
        };
        let back: ProbeReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.errno("connect"), Some(libc::ECONNREFUSED));
    }
}
