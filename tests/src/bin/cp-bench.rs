//! cp-bench: what the guard costs — connect()+close latency and echo throughput, guarded (through the gateway) versus direct.
//!
//! Run as root with `cargo xtask bench` (which sets CHOKEPOINT_BIN), or
//! `cargo run --release -p chokepoint-tests --bin cp-bench -- [--connects N] [--bytes B] [--rounds R]`.
//! It guards a private test cgroup, starts the gateway on it with an allowed
//! loopback echo server, and runs itself as a worker process inside and
//! outside that cgroup, alternating, taking the median of the rounds.
//!
//! The kernel side's own cost comes from the kernel's BPF run-time
//! statistics (`kernel.bpf_stats_enabled`, switched on for the run and
//! restored after): the run time of every program the gateway holds,
//! summed over a guarded connect phase and divided by its connects, and
//! the `cgroup_skb` egress program's time per packet while streaming.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chokepoint_tests::{
    Gateway, GatewayConfig, Rule, Server, Target, TestCgroup, interrupt, run_with_timeout,
};
use socket2::SockRef;

/// Added kernel-side latency per connect that the design allows.
const CONNECT_BUDGET_US: f64 = 3.0;
/// Lowest acceptable passthrough throughput relative to direct.
const THROUGHPUT_FLOOR: f64 = 0.8;
const WORKER_TIMEOUT: Duration = Duration::from_secs(600);
const CHUNK: usize = 256 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("worker") {
        worker(&args[1..])
    } else {
        interrupt::install().and_then(|()| bench(&args))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The guards (gateway, test cgroup, `kernel.bpf_stats_enabled`)
        // have undone their part by now.
        Err(_) if interrupt::interrupted() => {
            eprintln!("cp-bench: interrupted; stopped everything it had started");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("cp-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let v = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .ok()
                .with_context(|| format!("bad value for {name}: {v}"))
        }
    }
}

struct Settings {
    connects: u64,
    bytes: u64,
    rounds: usize,
}

fn bench(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: cp-bench [--connects N (10000)] [--bytes B (268435456)] [--rounds R (5)]");
        return Ok(());
    }
    let s = Settings {
        connects: flag(args, "--connects", 10_000)?,
        bytes: flag(args, "--bytes", 256 * 1024 * 1024)?,
        rounds: flag(args, "--rounds", 5)?,
    };
    if s.rounds == 0 || s.connects == 0 || s.bytes == 0 {
        bail!("--connects, --bytes and --rounds must be positive");
    }
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let cg = TestCgroup::new("bench")?;
    let echo = Server::echo(ip)?;
    // The harness's echo server spawns a thread per connection, which would
    // fill its backlog under a connect storm and measure itself instead.
    let acceptor = spawn_acceptor(ip)?;
    let cfg = GatewayConfig::new("bench", &cg)?
        .target(Target::new(
            "bench",
            &[&ip.to_string()],
            &[echo.port(), acceptor.port()],
        ))
        .rule(Rule::allow("bench", &["bench"]));
    let gw = Gateway::start(&cfg)?;
    let gw_pid = gw.pid().context("the gateway is not running")?;
    let _stats = BpfStats::enable()?;
    let me = std::env::current_exe().context("locating cp-bench")?;
    let (echo_to, acceptor_to) = (echo.addr().to_string(), acceptor.to_string());

    let connect_args = [
        "worker",
        "connect",
        "--to",
        &acceptor_to,
        "--count",
        &s.connects.to_string(),
    ];
    let stream_args = [
        "worker",
        "stream",
        "--to",
        &echo_to,
        "--bytes",
        &s.bytes.to_string(),
    ];
    let (mut direct_ns, mut guarded_ns, mut direct_bps, mut guarded_bps) =
        (vec![], vec![], vec![], vec![]);
    // Per guarded connect: ns in all programs, and (ns, runs) by program type.
    let (mut hook_ns, mut hook_by_type) = (vec![], BTreeMap::<&str, (Vec<f64>, Vec<f64>)>::new());
    let mut egress_ns_per_packet = vec![];
    for round in 1..=s.rounds {
        interrupt::check()?;
        eprintln!("round {round}/{}", s.rounds);
        // Alternate who goes first so drift (caches, TIME_WAIT) is shared.
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for guarded in order {
            let cmd = || {
                if guarded {
                    cg.command(&me)
                } else {
                    Command::new(&me)
                }
            };
            let before = prog_stats(gw_pid)?;
            let ns = run_worker(cmd(), &connect_args)?;
            let between = prog_stats(gw_pid)?;
            let bps = run_worker(cmd(), &stream_args)?;
            let after = prog_stats(gw_pid)?;
            if guarded {
                let connect = delta(&before, &between);
                let per = |ns: u64| ns as f64 / s.connects as f64;
                hook_ns.push(per(connect.values().map(|d| d.run_ns).sum()));
                let mut by_type = BTreeMap::<&str, (u64, u64)>::new();
                for d in connect.values() {
                    let e = by_type.entry(d.kind).or_default();
                    e.0 += d.run_ns;
                    e.1 += d.runs;
                }
                for (kind, (ns, runs)) in by_type {
                    let e = hook_by_type.entry(kind).or_default();
                    e.0.push(per(ns));
                    e.1.push(per(runs));
                }
                let stream = delta(&between, &after);
                let (ns, count) = stream
                    .values()
                    .filter(|d| d.kind == "cgroup_skb")
                    .fold((0, 0), |(n, c), d| (n + d.run_ns, c + d.runs));
                if count > 0 {
                    egress_ns_per_packet.push(ns as f64 / count as f64);
                }
            }
            if guarded {
                guarded_ns.push(ns);
                guarded_bps.push(bps);
            } else {
                direct_ns.push(ns);
                direct_bps.push(bps);
            }
        }
    }
    let flows = gw.flow_events().len();
    drop(gw);

    let (dn, gn) = (
        median(&mut direct_ns) / 1000.0,
        median(&mut guarded_ns) / 1000.0,
    );
    let (db, gb) = (
        median(&mut direct_bps) / 1e6,
        median(&mut guarded_bps) / 1e6,
    );
    let added = gn - dn;
    let ratio = gb / db;
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "cp-bench: {} rounds (median), {} connects and {} MiB echoed per round, {flows} flows logged",
        s.rounds,
        s.connects,
        s.bytes / (1024 * 1024)
    );
    println!(
        "{:<32} {:>12} {:>12} {:>14} {:>10}  result",
        "measure", "direct", "guarded", "cost", "target"
    );
    println!(
        "{:<32} {:>12.2} {:>12.2} {:>11.2} µs {:>10}  {}",
        "connect()+close, µs per op",
        dn,
        gn,
        added,
        format!("≤ {CONNECT_BUDGET_US} µs"),
        verdict(added <= CONNECT_BUDGET_US)
    );
    println!(
        "{:<32} {:>12.0} {:>12.0} {:>13.2}× {:>10}  {}",
        "echo throughput, MB/s",
        db,
        gb,
        ratio,
        format!("≥ {THROUGHPUT_FLOOR}×"),
        verdict(ratio >= THROUGHPUT_FLOOR)
    );
    let hooks_us = median(&mut hook_ns) / 1000.0;
    println!(
        "{:<32} {:>12} {:>12} {:>11.2} µs {:>10}  {}",
        "kernel hooks per connect (BPF)",
        "",
        "",
        hooks_us,
        format!("≤ {CONNECT_BUDGET_US} µs"),
        verdict(hooks_us <= CONNECT_BUDGET_US)
    );
    // Runs per connect show how much of each type's time is the per-run
    // floor (entering the program plus bpf_stats' own two clock reads):
    // `cgroup_sock` is two near-empty programs.
    for (kind, (mut ns, mut runs)) in hook_by_type {
        let (ns, runs) = (median(&mut ns), median(&mut runs));
        println!(
            "  of which {kind:<22} {ns:>38.0} ns  in {runs:.1} runs, {:.0} ns per run",
            ns / runs.max(f64::MIN_POSITIVE)
        );
    }
    if !egress_ns_per_packet.is_empty() {
        println!(
            "{:<32} {:>38.0} ns",
            "cgroup_skb egress, per packet",
            median(&mut egress_ns_per_packet)
        );
    }
    println!(
        "guarded connect+close includes the kernel hooks and the handshake with the gateway's listener; \
         the gateway's accept and upstream work runs concurrently on the other cores. \
         The hooks' own time is the kernel's bpf_stats run time of the gateway's programs."
    );
    Ok(())
}

/// A listener with a deep backlog whose thread accepts and drops
/// connections as fast as they come; lives until the process exits.
fn spawn_acceptor(ip: IpAddr) -> Result<SocketAddr> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(ip, 0)),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.listen(4096)?;
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    Ok(addr)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs one worker and returns the number it prints.
fn run_worker(mut cmd: Command, args: &[&str]) -> Result<f64> {
    cmd.args(args).stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, WORKER_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "worker {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .trim()
        .parse()
        .with_context(|| format!("worker {args:?} printed {stdout:?}"))
}

/// Worker side: `connect` prints ns per connect+close, `stream` prints bytes/s.
fn worker(args: &[String]) -> Result<()> {
    let to: SocketAddr = flag(args, "--to", SocketAddr::from(([0, 0, 0, 0], 0)))?;
    match args.first().map(String::as_str) {
        Some("connect") => {
            let count: u64 = flag(args, "--count", 10_000)?;
            // Warm-up: page in code paths and the gateway's first accept.
            for _ in 0..count.min(200) {
                connect_close(to)?;
            }
            let start = Instant::now();
            for _ in 0..count {
                connect_close(to)?;
            }
            println!("{}", start.elapsed().as_nanos() as f64 / count as f64);
        }
        Some("stream") => {
            let bytes: u64 = flag(args, "--bytes", 256 * 1024 * 1024)?;
            println!("{}", stream(to, bytes)?);
        }
        other => bail!("unknown worker {other:?}"),
    }
    Ok(())
}

fn connect_close(to: SocketAddr) -> Result<()> {
    let s = TcpStream::connect(to).with_context(|| format!("connect {to}"))?;
    // Abortive close: thousands of TIME_WAIT sockets would otherwise exhaust
    // the ephemeral ports towards the one destination between rounds.
    SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    Ok(())
}

/// Echoes `bytes` through `to` (writer thread + reader), returns bytes/s of payload.
fn stream(to: SocketAddr, bytes: u64) -> Result<f64> {
    let s = TcpStream::connect(to).with_context(|| format!("connect {to}"))?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let buf = vec![0x5au8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        w.shutdown(Shutdown::Write)
    });
    let mut r = &s;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let elapsed = start.elapsed();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if got != bytes {
        bail!("echoed {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / elapsed.as_secs_f64())
}

/// `kernel.bpf_stats_enabled` on for as long as this lives, then back to
/// what it was (it costs two clock reads per program run while on).
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let previous =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(Self {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

/// One program's counters, from the fdinfo of the gateway's fd for it.
#[derive(Clone, Copy, Debug, Default)]
struct ProgStat {
    kind: &'static str,
    run_ns: u64,
    runs: u64,
}

/// Every BPF program the process `pid` holds, by program id.
fn prog_stats(pid: u32) -> Result<BTreeMap<u64, ProgStat>> {
    let mut out = BTreeMap::new();
    let fds = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&fds).with_context(|| format!("listing {fds}"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(&info) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        };
        let (Some(id), Some(kind)) = (field("prog_id:"), field("prog_type:")) else {
            continue;
        };
        out.insert(
            id,
            ProgStat {
                kind: prog_kind(kind),
                run_ns: field("run_time_ns:").unwrap_or(0),
                runs: field("run_cnt:").unwrap_or(0),
            },
        );
    }
    if out.is_empty() {
        bail!("the gateway (pid {pid}) holds no BPF programs");
    }
    Ok(out)
}

/// Names for `enum bpf_prog_type` values the gateway uses.
fn prog_kind(t: u64) -> &'static str {
    match t {
        8 => "cgroup_skb",
        9 => "cgroup_sock",
        13 => "sock_ops",
        18 => "cgroup_sock_addr",
        _ => "other",
    }
}

fn delta(
    before: &BTreeMap<u64, ProgStat>,
    after: &BTreeMap<u64, ProgStat>,
) -> BTreeMap<u64, ProgStat> {
    after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id).copied().unwrap_or_default();
            (
                *id,
                ProgStat {
                    kind: a.kind,
                    run_ns: a.run_ns.saturating_sub(b.run_ns),
                    runs: a.runs.saturating_sub(b.runs),
                },
            )
        })
        .collect()
}
