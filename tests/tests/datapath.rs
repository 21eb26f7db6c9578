//! Data path: what the kernel hooks and the TCP passthrough do to processes in a guarded cgroup (run as root).
//!
//! Every test has its own cgroup, instance, listen port, servers and a
//! 127.0.0.x address of its own, so the default parallel test threads never
//! see each other's connections. Absence ("no connection", "no flow event")
//! is asserted after a later event that could only come after it, never after
//! a sleep.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use chokepoint_tests::{
    EXEMPT_MARK, Gateway, GatewayConfig, Mode, ProbeArgs, ProbeReport, Rule, Server, TEST_NET_ADDR,
    Target, TestCgroup, TestNetns, UdpSink, cgroup2_mount, cli,
    gateway::status_detached,
    metrics::{http_get, sample},
    pin_dir, run_with_timeout, wait_for,
};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_cp-probe");

/// Hang guards only.
const FLOWS_TIMEOUT: Duration = Duration::from_secs(300);
const MAPS_TIMEOUT: Duration = Duration::from_secs(30);

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn v6_loopback() -> IpAddr {
    IpAddr::V6(Ipv6Addr::LOCALHOST)
}

/// `[::ffff:a.b.c.d]:port` for an IPv4 server address.
fn mapped(addr: SocketAddr) -> SocketAddr {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("{addr} is not IPv4")
    };
    SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port())
}

/// A target named `name` for exactly these servers.
fn target_for(name: &str, servers: &[&Server]) -> Target {
    let addresses: Vec<String> = servers.iter().map(|s| s.addr().ip().to_string()).collect();
    let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
    Target::new(name, &addresses, &ports)
}

fn tcp_echo(to: SocketAddr, bytes: u64) -> ProbeArgs {
    ProbeArgs::tcp(to).send(bytes).expect_echo()
}

fn assert_passed(r: &ProbeReport, bytes: u64) {
    assert!(r.ok && r.connected, "expected a clean echo, got {r:?}");
    assert_eq!(
        (r.sent, r.received, r.echo_ok),
        (bytes, bytes, Some(true)),
        "{r:?}"
    );
}

/// A denied client sees failure and not one byte.
fn assert_refused(r: &ProbeReport) {
    assert!(!r.ok, "expected the connection to fail, got {r:?}");
    assert!(
        !r.errors.is_empty(),
        "a refused client must observe an error: {r:?}"
    );
    assert_eq!(
        r.received, 0,
        "a refused client must receive nothing: {r:?}"
    );
}

/// The flow event's fields, as the daemon contract lists them.
const FLOW_FIELDS: [&str; 13] = [
    "flow_id",
    "pid",
    "uid",
    "gid",
    "comm",
    "cgroup_id",
    "dst",
    "decision",
    "rule",
    "mode",
    "bytes_up",
    "bytes_down",
    "duration_ms",
];

/// A 100-byte echo from inside `cg` to `echo` comes back intact, and the
/// gateway logs it as allowed by `rule`.
fn assert_echo_allowed(cg: &TestCgroup, gw: &Gateway, echo: &Server, rule: &str) -> Result<()> {
    let r = tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?;
    assert_passed(&r, 100);
    assert_flow(
        &gw.wait_for_flow(r.pid)?,
        echo.addr(),
        "allow",
        rule,
        "enforce",
    );
    Ok(())
}

fn assert_flow(ev: &Value, dst: SocketAddr, decision: &str, rule: &str, mode: &str) {
    let missing: Vec<&str> = FLOW_FIELDS
        .into_iter()
        .filter(|f| ev[*f].is_null())
        .collect();
    assert!(missing.is_empty(), "flow event lacks {missing:?}: {ev}");
    assert_eq!(ev["dst"], dst.to_string(), "dst in {ev}");
    assert_eq!(ev["decision"], decision, "decision in {ev}");
    assert_eq!(ev["rule"], rule, "rule in {ev}");
    assert_eq!(ev["mode"], mode, "mode in {ev}");
}

/// Refused by the kernel at `connect()` (EPERM: no rule could allow the
/// destination), and logged by the gateway all the same.
fn assert_refused_at_connect(r: &ProbeReport, ev: &Value) {
    assert_refused(r);
    assert!(
        !r.connected,
        "connect() succeeded for an unreachable destination: {r:?}"
    );
    const EPERM: i32 = 1;
    assert!(
        r.errors.iter().any(|e| e.errno == Some(EPERM)),
        "connect() should fail with EPERM: {r:?}"
    );
    assert_eq!(ev["enforced_by"], "kernel", "{ev}");
}

fn is_local_addr_of(r: &ProbeReport, peer: SocketAddr) -> bool {
    r.local_addr.as_deref() == Some(peer.to_string().as_str())
}

#[test]
fn allowed_target_round_trips_bytes_including_100mb_with_half_close() -> Result<()> {
    let cg = TestCgroup::new("allow")?;
    let echo = Server::echo(v4(2))?;
    let cfg = GatewayConfig::new("allow", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    let small = tcp_echo(echo.addr(), 65_536).run(cg.command(PROBE))?;
    assert_passed(&small, 65_536);
    let ev = gw.wait_for_flow(small.pid)?;
    assert_flow(&ev, echo.addr(), "allow", "allow-echo", "enforce");
    assert_eq!(
        (ev["bytes_up"].as_u64(), ev["bytes_down"].as_u64()),
        (Some(65_536), Some(65_536)),
        "{ev}"
    );
    // Mediated: the server's peer is the gateway's upstream socket, not the client.
    assert!(
        !is_local_addr_of(&small, echo.peers()[0]),
        "connection bypassed the gateway"
    );

    const BIG: u64 = 100 * 1000 * 1000;
    let big = tcp_echo(echo.addr(), BIG)
        .half_close()
        .run(cg.command(PROBE))?;
    assert_passed(&big, BIG);
    assert!(
        big.eof,
        "client should see the server's EOF after its own half-close: {big:?}"
    );
    let done = echo.wait_finished(2, FLOWS_TIMEOUT)?;
    let server_side = &done[1];
    assert!(
        server_side.saw_eof,
        "the server never saw the client's half-close: {server_side:?}"
    );
    assert_eq!(
        (server_side.bytes_in, server_side.bytes_out),
        (BIG, BIG),
        "{server_side:?}"
    );
    let ev = gw.wait_for_flow(big.pid)?;
    assert_flow(&ev, echo.addr(), "allow", "allow-echo", "enforce");
    assert_eq!(
        (ev["bytes_up"].as_u64(), ev["bytes_down"].as_u64()),
        (Some(BIG), Some(BIG)),
        "{ev}"
    );
    Ok(())
}

#[test]
fn unmatched_destination_is_denied_by_default_and_never_reached() -> Result<()> {
    let cg = TestCgroup::new("default-deny")?;
    let allowed = Server::echo(v4(3))?;
    let denied = Server::echo(v4(3))?;
    let cfg = GatewayConfig::new("default-deny", &cg)?
        .target(target_for("allowed", &[&allowed]))
        .rule(Rule::allow("allow-allowed", &["allowed"]));
    let gw = Gateway::start(&cfg)?;

    let r = tcp_echo(denied.addr(), 1000).run(cg.command(PROBE))?;
    // The flow event is logged after the decision: had the gateway connected
    // upstream, the server would have counted it by now.
    let ev = gw.wait_for_flow(r.pid)?;
    assert_refused_at_connect(&r, &ev);
    assert_flow(&ev, denied.addr(), "deny", "default-deny", "enforce");
    assert_eq!(
        (ev["bytes_up"].as_u64(), ev["bytes_down"].as_u64()),
        (Some(0), Some(0)),
        "{ev}"
    );
    assert_eq!(
        denied.accepted(),
        0,
        "a denied destination was connected to"
    );

    // Control: the same client to the allowed server passes.
    assert_passed(
        &tcp_echo(allowed.addr(), 1000).run(cg.command(PROBE))?,
        1000,
    );
    Ok(())
}

#[test]
fn explicit_deny_rule_overrides_allow() -> Result<()> {
    let cg = TestCgroup::new("deny-rule")?;
    let echo = Server::echo(v4(4))?;
    let cfg = GatewayConfig::new("deny-rule", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-everything", &["*"]))
        .rule(Rule::deny("no-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    let r = tcp_echo(echo.addr(), 1000).run(cg.command(PROBE))?;
    assert_refused(&r);
    let ev = gw.wait_for_flow(r.pid)?;
    assert_flow(&ev, echo.addr(), "deny", "no-echo", "enforce");
    // Some rule allows the destination ("*"), so the kernel hands it to
    // the gateway, which refuses it after accept.
    assert_eq!(ev["enforced_by"], "gateway", "{ev}");
    assert_eq!(echo.accepted(), 0, "a denied destination was connected to");
    Ok(())
}

/// Found in review: a connect to `0.0.0.0` or `::` reaches loopback (the
/// kernel routes the unspecified address to the host itself), but rules
/// matched it as written, so a deny on the loopback service did not apply
/// and the gateway connected to `0.0.0.0`, which reached it.
#[test]
fn unspecified_destinations_are_the_loopback_they_reach() -> Result<()> {
    let cg = TestCgroup::new("unspecified")?;
    let echo4 = Server::echo(v4(1))?;
    let echo6 = Server::echo(v6_loopback())?;
    let cfg = GatewayConfig::new("unspecified", &cg)?
        .target(target_for("echo", &[&echo4, &echo6]))
        .rule(Rule::allow("allow-everything", &["*"]))
        .rule(Rule::deny("no-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;
    for (echo, unspecified) in [
        (&echo4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        (&echo6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        (&echo4, IpAddr::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped())),
    ] {
        let to = SocketAddr::new(unspecified, echo.port());
        let r = tcp_echo(to, 100).run(cg.command(PROBE))?;
        assert_refused(&r);
        let ev = gw.wait_for_flow(r.pid)?;
        assert_flow(&ev, echo.addr(), "deny", "no-echo", "enforce");
    }
    assert_eq!(
        echo4.accepted() + echo6.accepted(),
        0,
        "a denied service was reached"
    );
    Ok(())
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_are_mediated() -> Result<()> {
    let cg = TestCgroup::new("ipv6")?;
    let v6_ok = Server::echo(v6_loopback())?;
    let v6_denied = Server::echo(v6_loopback())?;
    let mapped_ok = Server::echo(v4(5))?;
    let mapped_denied = Server::echo(v4(5))?;
    let cfg = GatewayConfig::new("ipv6", &cg)?
        .target(target_for("v6", &[&v6_ok]))
        .target(target_for("mapped", &[&mapped_ok]))
        .rule(Rule::allow("allow-v6", &["v6"]))
        .rule(Rule::allow("allow-mapped", &["mapped"]));
    let gw = Gateway::start(&cfg)?;

    let r = tcp_echo(v6_ok.addr(), 4096).run(cg.command(PROBE))?;
    assert_passed(&r, 4096);
    assert_flow(
        &gw.wait_for_flow(r.pid)?,
        v6_ok.addr(),
        "allow",
        "allow-v6",
        "enforce",
    );
    assert!(
        !is_local_addr_of(&r, v6_ok.peers()[0]),
        "IPv6 connection bypassed the gateway"
    );

    let r = tcp_echo(v6_denied.addr(), 4096).run(cg.command(PROBE))?;
    let ev = gw.wait_for_flow(r.pid)?;
    assert_refused_at_connect(&r, &ev);
    assert_flow(&ev, v6_denied.addr(), "deny", "default-deny", "enforce");
    assert_eq!(v6_denied.accepted(), 0);

    // An AF_INET6 socket to ::ffff:127.0.0.5 is an IPv4 connection; the
    // daemon reports it as IPv4 and matches it against IPv4 targets.
    let r = tcp_echo(mapped(mapped_ok.addr()), 4096).run(cg.command(PROBE))?;
    assert_passed(&r, 4096);
    assert_flow(
        &gw.wait_for_flow(r.pid)?,
        mapped_ok.addr(),
        "allow",
        "allow-mapped",
        "enforce",
    );
    assert!(
        !is_local_addr_of(&r, mapped_ok.peers()[0]),
        "mapped connection bypassed the gateway"
    );

    let r = tcp_echo(mapped(mapped_denied.addr()), 4096).run(cg.command(PROBE))?;
    let ev = gw.wait_for_flow(r.pid)?;
    assert_refused_at_connect(&r, &ev);
    assert_flow(&ev, mapped_denied.addr(), "deny", "default-deny", "enforce");
    assert_eq!(mapped_denied.accepted(), 0);
    Ok(())
}

#[test]
fn killed_gateway_fails_closed_and_restart_resumes() -> Result<()> {
    let cg = TestCgroup::new("crash")?;
    let echo = Server::echo(v4(6))?;
    let cfg = GatewayConfig::new("crash", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let mut gw = Gateway::start(&cfg)?;
    assert_passed(&tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?, 100);
    assert_eq!(echo.accepted(), 1);

    gw.kill9()?;
    let r = tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?;
    assert!(
        !r.connected,
        "connect must fail while the gateway is down: {r:?}"
    );
    assert_eq!(r.errno("connect"), Some(libc::ECONNREFUSED), "{r:?}");
    let v6 = tcp_echo(mapped(echo.addr()), 100).run(cg.command(PROBE))?;
    assert_eq!(
        v6.errno("connect"),
        Some(libc::ECONNREFUSED),
        "mapped connect while down: {v6:?}"
    );
    assert_eq!(
        echo.accepted(),
        1,
        "the destination was reached while the gateway was down"
    );
    assert_eq!(
        gw.status()?["attached"],
        true,
        "programs must stay attached after a crash"
    );

    // As after an upgrade that renamed or dropped a program: a pinned
    // link whose name this version does not have. The restart must detach
    // it, or its old code would keep running beside the new.
    let links_before = gw.status()?["links"].as_array().map(Vec::len);
    let links = pin_dir(gw.instance()).join("links");
    std::fs::rename(links.join("cp_egress"), links.join("cp_retired"))?;

    gw.restart()?;
    let status_after = gw.status()?;
    assert_eq!(
        status_after["links"].as_array().map(Vec::len),
        links_before,
        "{status_after}"
    );
    assert!(!links.join("cp_retired").exists(), "{status_after}");
    assert_echo_allowed(&cg, &gw, &echo, "allow-echo")?;
    assert_eq!(echo.accepted(), 2);

    // Dropping the fixture stops the daemon and runs `chokepoint detach`:
    // the guard is gone and the same client now goes direct.
    let instance = gw.instance().to_owned();
    drop(gw);
    assert!(!pin_dir(&instance).exists(), "pins left after detach");
    assert_eq!(status_detached(&instance)?["attached"], false);
    let r = tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?;
    assert_passed(&r, 100);
    assert!(
        is_local_addr_of(&r, echo.peers()[2]),
        "still redirected after detach"
    );
    // detach is idempotent.
    let again = cli(&["detach", "--instance", &instance])?;
    assert!(again.status.success(), "second detach: {again:?}");
    Ok(())
}

#[test]
fn raw_icmp_and_udp_sockets_are_refused() -> Result<()> {
    let cg = TestCgroup::new("sockets")?;
    let udp = UdpSink::start(v4(7))?;
    let cfg = GatewayConfig::new("sockets", &cg)?;
    let gw = Gateway::start(&cfg)?;

    // Controls outside the cgroup: as root these succeed, so an EPERM inside
    // can only be the guard.
    let outside = ProbeArgs::raw().run(Command::new(PROBE))?;
    assert!(outside.ok, "raw socket outside the cgroup: {outside:?}");
    let outside = ProbeArgs::ping_socket().run(Command::new(PROBE))?;
    assert!(
        outside.ok,
        "ping socket outside the cgroup (own netns): {outside:?}"
    );

    let raw = ProbeArgs::raw().run(cg.command(PROBE))?;
    assert_eq!(
        raw.errno("socket"),
        Some(libc::EPERM),
        "raw socket: {raw:?}"
    );
    let ping = ProbeArgs::ping_socket().run(cg.command(PROBE))?;
    assert_eq!(
        ping.errno("socket"),
        Some(libc::EPERM),
        "ping socket: {ping:?}"
    );

    let sent = ProbeArgs::udp(udp.addr()).run(cg.command(PROBE))?;
    assert_eq!(
        sent.errno("sendto"),
        Some(libc::EPERM),
        "UDP sendto: {sent:?}"
    );
    let connected = ProbeArgs::udp_connect(udp.addr()).run(cg.command(PROBE))?;
    assert_eq!(
        connected.errno("connect"),
        Some(libc::EPERM),
        "UDP connect: {connected:?}"
    );
    // Datagrams on loopback arrive in order: once ours is there, nothing
    // from the probes is still on its way.
    UdpSocket::bind((v4(7), 0))?.send_to(b"sentinel", udp.addr())?;
    let got = wait_for("the sentinel datagram", Duration::from_secs(30), || {
        let got = udp.received();
        (!got.is_empty()).then_some(got)
    })?;
    assert_eq!(
        got,
        vec![b"sentinel".to_vec()],
        "the UDP server received datagrams from the guarded cgroup"
    );

    let counters = gw.status()?["counters"].clone();
    assert!(counters["socket_denied"].as_u64() >= Some(2), "{counters}");
    assert!(counters["denied"].as_u64() >= Some(2), "{counters}");
    Ok(())
}

/// Fields of the flow events of `pid`, once there are `n`.
fn wait_flows_of(gw: &Gateway, pid: u32, n: usize) -> Result<Vec<Value>> {
    wait_for(
        &format!("{n} flow events of pid {pid}"),
        FLOWS_TIMEOUT,
        || {
            let flows = gw.flows_of(pid);
            (flows.len() >= n).then_some(flows)
        },
    )
}

#[test]
fn udp_to_a_udp_target_is_relayed_per_datagram_and_the_rest_refused() -> Result<()> {
    let cg = TestCgroup::new("udp-relay")?;
    let one = UdpSink::echo(v4(41))?;
    let two = UdpSink::echo(v4(41))?;
    let other = UdpSink::echo(v4(41))?;
    let for_others = UdpSink::echo(v4(41))?;
    let mut cfg = GatewayConfig::new("udp-relay", &cg)?
        .target(Target::udp(
            "time",
            &["127.0.0.41"],
            &[one.addr().port(), two.addr().port()],
        ))
        .target(Target::udp(
            "theirs",
            &["127.0.0.41"],
            &[for_others.addr().port()],
        ))
        // A TCP target on the same port: UDP to it must not pass.
        .target(Target::new(
            "tcp-only",
            &["127.0.0.41"],
            &[other.addr().port()],
        ))
        .rule(Rule::allow("time", &["time"]))
        .rule(Rule::allow("not-root", &["theirs"]).uids(&[4242]))
        .rule(Rule::allow("tcp", &["tcp-only"]));
    cfg.daemon.push("udp_idle_timeout = \"1s\"".into());
    let gw = Gateway::start(&cfg)?;

    // Connected: the reply comes back from the server asked (recvmsg and
    // getpeername are restored), through the gateway.
    let r = ProbeArgs::udp_connect(one.addr())
        .expect_reply()
        .run(cg.command(PROBE))?;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.replies,
        [(
            one.addr().to_string(),
            format!("{} cp-probe udp", one.addr())
        )],
        "{r:?}"
    );
    let ev = &wait_flows_of(&gw, r.pid, 1)?[0];
    assert_flow(ev, one.addr(), "allow", "time", "enforce");
    assert_eq!(ev["protocol"], "udp", "{ev}");
    assert_eq!(
        (ev["bytes_up"].as_u64(), ev["bytes_down"].as_u64()),
        (Some(12), Some(12 + 1 + one.addr().to_string().len() as u64)),
        "{ev}"
    );

    // Unconnected, two destinations from one socket: each datagram goes to
    // its own destination (the kernel marks it), each is its own flow.
    let r = ProbeArgs::udp(one.addr())
        .and(two.addr())
        .expect_reply()
        .run(cg.command(PROBE))?;
    assert!(r.ok, "{r:?}");
    let mut payloads: Vec<&str> = r.replies.iter().map(|(_, p)| p.as_str()).collect();
    payloads.sort_unstable();
    let mut wanted = [
        format!("{} cp-probe udp", one.addr()),
        format!("{} cp-probe udp", two.addr()),
    ];
    wanted.sort_unstable();
    assert_eq!(payloads, wanted, "{r:?}");
    let flows = wait_flows_of(&gw, r.pid, 2)?;
    let mut dsts: Vec<String> = flows.iter().map(|e| e["dst"].to_string()).collect();
    dsts.sort_unstable();
    let mut expected = vec![format!("\"{}\"", one.addr()), format!("\"{}\"", two.addr())];
    expected.sort_unstable();
    assert_eq!(dsts, expected, "{flows:?}");
    assert_eq!(one.received().len(), 2, "one: {:?}", one.received());
    assert_eq!(two.received().len(), 1, "two: {:?}", two.received());

    // In the kernel's set (a rule allows uid 4242) but not for root: the
    // gateway refuses, the server hears nothing, the flow says why.
    let r = ProbeArgs::udp(for_others.addr())
        .expect_reply()
        .run(cg.command(PROBE))?;
    assert!(!r.ok && r.replies.is_empty(), "{r:?}");
    let ev = &wait_flows_of(&gw, r.pid, 1)?[0];
    assert_flow(ev, for_others.addr(), "deny", "default-deny", "enforce");
    assert_eq!(ev["enforced_by"], "gateway", "{ev}");

    // No UDP rule for the port (only a TCP one), and a port no rule names:
    // refused at sendto(), and logged all the same (once per socket and
    // destination, by the kernel's report).
    for dst in [other.addr(), SocketAddr::new(v4(41), 9)] {
        let r = ProbeArgs::udp(dst).run(cg.command(PROBE))?;
        assert_eq!(r.errno("sendto"), Some(libc::EPERM), "{dst}: {r:?}");
        let ev = &wait_flows_of(&gw, r.pid, 1)?[0];
        assert_flow(ev, dst, "deny", "default-deny", "enforce");
        assert_eq!(
            (&ev["enforced_by"], &ev["protocol"]),
            (&"kernel".into(), &"udp".into()),
            "{ev}"
        );
    }
    // Straight to the relay's own port: refused too.
    let relay = SocketAddr::new(v4(1), cfg.udp_port);
    let r = ProbeArgs::udp(relay).run(cg.command(PROBE))?;
    assert_eq!(r.errno("sendto"), Some(libc::EPERM), "{r:?}");

    // Datagrams on loopback arrive in order: after the sentinel, nothing
    // from the probes is still on its way.
    for sink in [&other, &for_others] {
        UdpSocket::bind((v4(41), 0))?.send_to(b"sentinel", sink.addr())?;
        let got = wait_for("the sentinel datagram", MAPS_TIMEOUT, || {
            let got = sink.received();
            (!got.is_empty()).then_some(got)
        })?;
        assert_eq!(
            got,
            vec![b"sentinel".to_vec()],
            "{} was reached",
            sink.addr()
        );
    }
    let counters = gw.status()?["counters"].clone();
    assert!(counters["udp_relayed"].as_u64() >= Some(4), "{counters}");
    Ok(())
}

#[test]
fn only_tcp_and_udp_inet_sockets_can_be_created() -> Result<()> {
    let cg = TestCgroup::new("socket-kinds")?;
    let _gw = Gateway::start(&GatewayConfig::new("socket-kinds", &cg)?)?;
    let refused = [
        ("raw IPv4 IPPROTO_RAW", 4, "raw", libc::IPPROTO_RAW),
        ("raw IPv6 ICMPv6", 6, "raw", libc::IPPROTO_ICMPV6),
        ("MPTCP IPv4", 4, "stream", libc::IPPROTO_MPTCP),
        ("MPTCP IPv6", 6, "stream", libc::IPPROTO_MPTCP),
        ("UDP-Lite IPv4", 4, "dgram", libc::IPPROTO_UDPLITE),
        ("UDP-Lite IPv6", 6, "dgram", libc::IPPROTO_UDPLITE),
        ("SCTP IPv4", 4, "seqpacket", libc::IPPROTO_SCTP),
    ];
    let mut unsupported = Vec::new();
    for (what, family, ty, proto) in refused {
        // Control outside the cgroup: a kind this kernel cannot create at
        // all proves nothing about the guard.
        if !ProbeArgs::socket(family, ty, proto)
            .run(Command::new(PROBE))?
            .ok
        {
            unsupported.push(what);
            continue;
        }
        let r = ProbeArgs::socket(family, ty, proto).run(cg.command(PROBE))?;
        assert_eq!(r.errno("socket"), Some(libc::EPERM), "{what}: {r:?}");
    }
    if !unsupported.is_empty() {
        eprintln!("note: this kernel cannot create {unsupported:?}; not checked");
    }
    for (what, family, ty, proto) in [
        ("TCP IPv4", 4, "stream", 0),
        ("TCP IPv6", 6, "stream", libc::IPPROTO_TCP),
        ("UDP IPv4", 4, "dgram", libc::IPPROTO_UDP),
        ("UDP IPv6", 6, "dgram", 0),
    ] {
        let r = ProbeArgs::socket(family, ty, proto).run(cg.command(PROBE))?;
        assert!(r.ok, "{what} must stay creatable: {r:?}");
    }
    Ok(())
}

/// Families no inet hook sees: a vsock socket reaches the VM's host, a
/// packet socket the wire. Local ones stay usable.
#[test]
fn sockets_of_other_families_are_refused() -> Result<()> {
    let cg = TestCgroup::new("families")?;
    let gw = Gateway::start(&GatewayConfig::new("families", &cg)?)?;
    let links = gw.status()?["links"].clone();
    let guarded = links
        .as_array()
        .is_some_and(|l| l.iter().any(|n| n == "cp_socket_family"));
    if !guarded {
        // The kernel cannot run the guard: the daemon must say so, not
        // pretend.
        let warning = "sockets of families other than unix, inet, netlink and alg";
        wait_for("the family guard warning", MAPS_TIMEOUT, || {
            gw.logs().iter().any(|l| l.contains(warning)).then_some(())
        })?;
        eprintln!("note: this kernel cannot run the family guard; only the warning was checked");
        return Ok(());
    }
    let refused = [
        ("vsock stream", "vsock", "stream", 0),
        ("vsock seqpacket", "vsock", "seqpacket", 0),
        ("packet raw", "packet", "raw", 0),
        ("packet dgram", "packet", "dgram", 0),
        ("XDP", "xdp", "raw", 0),
    ];
    let mut unsupported = Vec::new();
    for (what, family, ty, proto) in refused {
        // As root outside the cgroup these succeed where the kernel has
        // the family at all, so an EPERM inside can only be the guard.
        if !ProbeArgs::socket_of(family, ty, proto)
            .run(Command::new(PROBE))?
            .ok
        {
            unsupported.push(what);
            continue;
        }
        let r = ProbeArgs::socket_of(family, ty, proto).run(cg.command(PROBE))?;
        assert_eq!(r.errno("socket"), Some(libc::EPERM), "{what}: {r:?}");
    }
    assert!(
        unsupported.len() < refused.len(),
        "this kernel creates none of {refused:?}: nothing was checked"
    );
    if !unsupported.is_empty() {
        eprintln!("note: this kernel cannot create {unsupported:?}; not checked");
    }
    for (what, family, ty) in [
        ("unix stream", "unix", "stream"),
        ("unix dgram", "unix", "dgram"),
        ("netlink route", "netlink", "dgram"),
        ("kernel crypto", "alg", "seqpacket"),
    ] {
        let r = ProbeArgs::socket_of(family, ty, 0).run(cg.command(PROBE))?;
        assert!(r.ok, "{what} must stay creatable: {r:?}");
    }
    let counters = gw.status()?["counters"].clone();
    assert!(counters["socket_denied"].as_u64() >= Some(1), "{counters}");
    Ok(())
}

#[test]
fn metrics_count_decisions_and_the_kernel_events() -> Result<()> {
    let cg = TestCgroup::new("metrics")?;
    let echo = Server::echo(v4(2))?;
    let unnamed = Server::echo(v4(2))?;
    // Below the ephemeral range, like the gateway's own ports: a port from
    // bind(0) could be taken meanwhile as another test's source port.
    let port = chokepoint_tests::ports::gateway_port()?;
    let cfg = GatewayConfig::new("metrics", &cg)?
        .daemon_setting(&format!("metrics_listen = \"127.0.0.1:{port}\""))
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    let allowed = tcp_echo(echo.addr(), 1000).run(cg.command(PROBE))?;
    assert_passed(&allowed, 1000);
    let refused = tcp_echo(unnamed.addr(), 1000).run(cg.command(PROBE))?;
    assert_refused(&refused);
    gw.wait_for_flow(allowed.pid)?;
    gw.wait_for_flow(refused.pid)?;

    let allow = r#"chokepoint_connections_total{protocol="tcp",decision="allow",rule="allow-echo",enforced_by="gateway"}"#;
    let deny = r#"chokepoint_connections_total{protocol="tcp",decision="deny",rule="default-deny",enforced_by="kernel"}"#;
    // Counted right after the flow's log line: give it that moment.
    let metrics = wait_for(
        "both connections in the metrics",
        Duration::from_secs(10),
        || {
            let (status, body) = http_get(port, "/metrics").ok()?;
            (status.contains("200") && sample(&body, deny).is_some()).then_some(body)
        },
    )?;
    assert_eq!(sample(&metrics, allow), Some(1), "{metrics}");
    assert_eq!(sample(&metrics, deny), Some(1), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"chokepoint_connection_bytes_total{protocol="tcp",direction="up"}"#
        ),
        Some(1000),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "chokepoint_attached"),
        Some(1),
        "{metrics}"
    );
    for event in ["redirected", "unreachable"] {
        let series = format!("chokepoint_kernel_events_total{{event=\"{event}\"}}");
        assert!(sample(&metrics, &series) >= Some(1), "{series}: {metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    let (status, _) = http_get(port, "/")?;
    assert!(status.contains("404"), "{status}");
    Ok(())
}

#[test]
fn run_with_busy_metrics_port_says_so_and_leaves_no_pins() -> Result<()> {
    let cg = TestCgroup::new("busy-metrics")?;
    let holder = TcpListener::bind((v4(1), 0))?;
    let port = holder.local_addr()?.port();
    let cfg = GatewayConfig::new("busy-metrics", &cg)?
        .daemon_setting(&format!("metrics_listen = \"127.0.0.1:{port}\""));
    let (out, _dir) = run_expecting_failure(&cfg.to_toml(), &cfg.instance)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("metrics_listen") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_required_family_guard_that_cannot_run_stops_the_start() -> Result<()> {
    let cg = TestCgroup::new("families-required")?;
    let cfg =
        GatewayConfig::new("families-required", &cg)?.guard_setting("require_family_guard = true");
    match Gateway::start(&cfg) {
        Ok(gw) => {
            let links = gw.status()?["links"].clone();
            assert!(
                links
                    .as_array()
                    .is_some_and(|l| l.iter().any(|n| n == "cp_socket_family")),
                "started without the required guard: {links}"
            );
            eprintln!("note: this kernel runs the family guard; only the start was checked");
        }
        Err(_) => {
            let (out, _dir) = run_expecting_failure(&cfg.to_toml(), &cfg.instance)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("require_family_guard")
                    && stderr.contains("RestrictAddressFamilies"),
                "the refusal does not say why or what to do: {stderr}"
            );
            // Nothing may stay attached either: a raw socket, which the
            // cgroup hooks refuse, is creatable again in the cgroup.
            let raw = ProbeArgs::raw().run(cg.command(PROBE))?;
            assert!(raw.ok, "something stayed attached: {raw:?}");
        }
    }
    Ok(())
}

#[test]
fn tcp_fast_open_is_redirected_like_connect() -> Result<()> {
    let cg = TestCgroup::new("tfo")?;
    let allowed = Server::echo(v4(17))?;
    let denied = Server::echo(v4(17))?;
    let cfg = GatewayConfig::new("tfo", &cg)?
        .target(target_for("echo", &[&allowed]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    let r = ProbeArgs::tfo(allowed.addr())
        .send(1000)
        .expect_echo()
        .run(cg.command(PROBE))?;
    assert_passed(&r, 1000);
    assert_flow(
        &gw.wait_for_flow(r.pid)?,
        allowed.addr(),
        "allow",
        "allow-echo",
        "enforce",
    );
    assert!(
        !is_local_addr_of(&r, allowed.peers()[0]),
        "TFO connection bypassed the gateway"
    );

    let r = ProbeArgs::tfo(denied.addr())
        .send(1000)
        .expect_echo()
        .run(cg.command(PROBE))?;
    let ev = gw.wait_for_flow(r.pid)?;
    assert_refused_at_connect(&r, &ev);
    assert_flow(&ev, denied.addr(), "deny", "default-deny", "enforce");
    assert_eq!(denied.accepted(), 0);
    Ok(())
}

#[test]
fn connections_that_skip_the_redirect_are_refused_by_the_gateway() -> Result<()> {
    // Straight to the gateway's port, from inside (the hook leaves the
    // gateway's own address alone) and from outside: no kernel record, so
    // the gateway must not guess a destination.
    let cg = TestCgroup::new("no-record")?;
    let gw =
        Gateway::start(&GatewayConfig::new("no-record", &cg)?.rule(Rule::allow("all", &["*"])))?;
    for to in [
        SocketAddr::new(v4(1), gw.listen_port()),
        SocketAddr::new(v6_loopback(), gw.listen_port()),
    ] {
        for (who, cmd) in [
            ("guarded", cg.command(PROBE)),
            ("unguarded", Command::new(PROBE)),
        ] {
            let r = tcp_echo(to, 100).run(cmd)?;
            assert_refused(&r);
            assert!(
                gw.flows_of(r.pid).is_empty(),
                "{who} direct connection to {to} logged as a flow"
            );
        }
    }
    // Any local process can do this as often as it likes, to every
    // listener: each refusal is logged only up to a budget.
    let said = |text: &str| {
        gw.events()
            .iter()
            .filter(|e| chokepoint_tests::message(e).is_some_and(|m| m.contains(text)))
            .count()
    };
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect((v4(1), gw.listen_port())) {
            // Read until the gateway resets it: it has been handled.
            let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
        }
    }
    let sender = UdpSocket::bind((v4(1), 0))?;
    for port in [gw.config().dns_port, gw.config().udp_port] {
        for _ in 0..100 {
            sender.send_to(b"\0\x01 not through the kernel", (v4(1), port))?;
        }
    }
    for text in [
        "DNS datagram with no kernel record",
        "UDP datagram with no kernel record",
    ] {
        wait_for(text, Duration::from_secs(10), || {
            (said(text) > 0).then_some(())
        })?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let tcp = said("no flow record for client");
    assert!(
        (4..=20).contains(&tcp),
        "{tcp} lines for 104 direct connections"
    );
    for text in [
        "DNS datagram with no kernel record",
        "UDP datagram with no kernel record",
    ] {
        assert_eq!(said(text), 1, "{text}: logged once per window");
    }
    Ok(())
}

/// A connect made while the gateway is down leaves its record under the
/// client's port (its SYN left before the refusal). Another job must not
/// collect it by binding that port and connecting to the gateway's
/// listener straight: that would hand it the first caller's identity and
/// destination. The kernel refuses straight connects from the cgroup, and
/// a restarted gateway forgets records older than its listeners (which is
/// what stops a process outside the cgroup, whom no hook sees).
#[test]
fn a_stale_flow_record_cannot_be_collected_by_another_connection() -> Result<()> {
    let cg = TestCgroup::new("stale-record")?;
    let echo = Server::echo(v4(43))?;
    let cfg = GatewayConfig::new("stale-record", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("root-only", &["echo"]).uids(&[0]));
    let mut gw = Gateway::start(&cfg)?;
    let listener = SocketAddr::new(v4(1), gw.listen_port());
    gw.kill9()?;
    // Root's connect fails, leaving its record under its port.
    let from = {
        let probe = TcpListener::bind((v4(1), 0))?;
        probe.local_addr()?
    };
    let r = tcp_echo(echo.addr(), 10)
        .from(from)
        .run(cg.command(PROBE))?;
    assert_eq!(r.errno("connect"), Some(libc::ECONNREFUSED), "{r:?}");
    gw.restart()?;

    let nobody = cg.command_as(PROBE, 65534, 65534);
    let straight = ProbeArgs::tcp(listener)
        .send(10)
        .expect_echo()
        .from(from)
        .run(nobody)?;
    assert_eq!(straight.errno("connect"), Some(libc::EPERM), "{straight:?}");
    let outside = ProbeArgs::tcp(listener)
        .send(10)
        .expect_echo()
        .from(from)
        .run(Command::new(PROBE))?;
    assert_refused(&outside);
    assert_eq!(echo.accepted(), 0, "the stale record was collected");
    // The port still works for its own next connection.
    assert_passed(
        &tcp_echo(echo.addr(), 10)
            .from(from)
            .run(cg.command(PROBE))?,
        10,
    );
    Ok(())
}

/// Source routes need no privilege (IP_OPTIONS with LSRR, IPV6_RTHDR) and
/// make the kernel route a packet to the route's first hop instead of the
/// gateway address the hooks wrote: the egress program drops them, so the
/// send fails instead of leaving the host.
#[test]
fn source_routed_datagrams_are_refused() -> Result<()> {
    let cg = TestCgroup::new("source-route")?;
    let sink = UdpSink::echo(v4(42))?;
    let sink6 = UdpSink::echo(v6_loopback())?;
    let cfg = GatewayConfig::new("source-route", &cg)?
        .target(Target::udp(
            "time",
            &["127.0.0.42", "::1"],
            &[sink.addr().port(), sink6.addr().port()],
        ))
        .rule(Rule::allow("time", &["time"]));
    let _gw = Gateway::start(&cfg)?;
    for (dst, routed) in [
        (
            sink.addr(),
            ProbeArgs::udp(sink.addr()).lsrr(std::net::Ipv4Addr::new(127, 0, 0, 44)),
        ),
        (
            sink6.addr(),
            ProbeArgs::udp(sink6.addr()).rthdr(Ipv6Addr::LOCALHOST),
        ),
    ] {
        let plain = ProbeArgs::udp(dst).expect_reply().run(cg.command(PROBE))?;
        assert!(plain.ok && plain.replies.len() == 1, "{dst}: {plain:?}");
        let r = routed.run(cg.command(PROBE))?;
        assert_eq!(r.errno("sendto"), Some(libc::EPERM), "{dst}: {r:?}");
    }
    Ok(())
}

#[test]
fn udp_flows_count_against_the_jobs_connection_limit() -> Result<()> {
    let cg = TestCgroup::new("udp-limit")?;
    let sink = UdpSink::echo(v4(23))?;
    let cfg = GatewayConfig::new("udp-limit", &cg)?
        .daemon_setting("max_connections_per_job = 2")
        .target(Target::udp("time", &["127.0.0.23"], &[sink.addr().port()]))
        .rule(Rule::allow("time", &["time"]));
    let gw = Gateway::start(&cfg)?;
    // Each probe sends from a socket of its own: a flow each, open until
    // udp_idle_timeout (30 s), longer than this test.
    for _ in 0..2 {
        let r = ProbeArgs::udp(sink.addr())
            .expect_reply()
            .run(cg.command(PROBE))?;
        assert!(r.ok && r.replies.len() == 1, "{r:?}");
    }
    let third = ProbeArgs::udp(sink.addr())
        .expect_reply()
        .run(cg.command(PROBE))?;
    assert!(
        third.replies.is_empty(),
        "a third flow is over the limit: {third:?}"
    );
    let shed = wait_for("the dropped flow's warning", FLOWS_TIMEOUT, || {
        gw.events()
            .into_iter()
            .find(|e| e["fields"]["decision"] == "shed")
    })?;
    assert_eq!(shed["fields"]["limit"], 2, "{shed}");
    assert_eq!(
        sink.received().len(),
        2,
        "the dropped flow's datagram never left"
    );
    Ok(())
}

#[test]
fn sockets_in_another_network_namespace_are_refused_and_leave_no_record() -> Result<()> {
    // A job can make a network namespace of its own (`unshare -rn`). Its
    // redirect could never reach the gateway from there, and a record its
    // connect left, keyed by a loopback port that namespace reuses freely,
    // could be taken for another job's connection in the gateway's.
    let cg = TestCgroup::new("own-netns")?;
    let echo = Server::echo(v4(22))?;
    let sink = UdpSink::echo(v4(22))?;
    let cfg = GatewayConfig::new("own-netns", &cg)?
        .target(target_for("echo", &[&echo]))
        .target(Target::udp("time", &["127.0.0.22"], &[sink.addr().port()]))
        .rule(Rule::allow("allow-both", &["echo", "time"]));
    let gw = Gateway::start(&cfg)?;

    let tcp = ProbeArgs::tcp(echo.addr())
        .send(10)
        .own_netns()
        .run(cg.command(PROBE))?;
    assert_eq!(tcp.errno("connect"), Some(libc::EPERM), "{tcp:?}");
    let udp = ProbeArgs::udp(sink.addr())
        .own_netns()
        .run(cg.command(PROBE))?;
    assert_eq!(udp.errno("sendto"), Some(libc::EPERM), "{udp:?}");
    let status = gw.status()?;
    assert_eq!(
        (
            status["maps"]["pending"].as_u64(),
            status["maps"]["flows"].as_u64()
        ),
        (Some(0), Some(0)),
        "no record left behind: {status}"
    );
    // The same cgroup from the gateway's namespace is served.
    let ok = ProbeArgs::tcp(echo.addr())
        .send(1000)
        .expect_echo()
        .run(cg.command(PROBE))?;
    assert_passed(&ok, 1000);
    assert_eq!(
        echo.accepted(),
        1,
        "only the connection from the host's namespace"
    );
    Ok(())
}

#[test]
fn process_outside_the_cgroup_goes_direct_without_flow_event() -> Result<()> {
    let cg = TestCgroup::new("outside")?;
    let echo = Server::echo(v4(8))?;
    let cfg = GatewayConfig::new("outside", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    let direct = tcp_echo(echo.addr(), 1000).run(Command::new(PROBE))?;
    assert_passed(&direct, 1000);
    assert!(
        is_local_addr_of(&direct, echo.peers()[0]),
        "unguarded process did not connect directly"
    );

    // A guarded connection after it: its event proves the log has caught up.
    let guarded = tcp_echo(echo.addr(), 1000).run(cg.command(PROBE))?;
    assert_passed(&guarded, 1000);
    gw.wait_for_flow(guarded.pid)?;
    assert_eq!(
        gw.flows_of(direct.pid),
        Vec::<Value>::new(),
        "unguarded process produced a flow event"
    );
    assert_eq!(gw.flow_events().len(), 1);
    Ok(())
}

#[test]
fn flow_event_names_pid_uid_gid_comm_and_cgroup() -> Result<()> {
    let cg = TestCgroup::new("identity")?;
    let echo = Server::echo(v4(9))?;
    let cfg = GatewayConfig::new("identity", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(
            Rule::allow("nobody-probe", &["echo"])
                .uids(&[65534])
                .processes(&["cp-pro*"]),
        );
    let gw = Gateway::start(&cfg)?;

    let mut cmd = cg.command_as(PROBE, 65534, 65534);
    cmd.current_dir("/");
    let nobody = tcp_echo(echo.addr(), 100).run(cmd)?;
    assert_eq!(nobody.uid, 65534);
    assert_passed(&nobody, 100);
    let ev = gw.wait_for_flow(nobody.pid)?;
    assert_flow(&ev, echo.addr(), "allow", "nobody-probe", "enforce");
    assert_eq!(ev["uid"], 65534, "{ev}");
    assert_eq!(ev["gid"], 65534, "{ev}");
    assert_eq!(ev["comm"], "cp-probe", "{ev}");
    assert_eq!(ev["cgroup_id"], cg.id()?, "{ev}");

    // Root does not match `uids = [65534]`.
    let root = tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?;
    assert_refused(&root);
    let ev = gw.wait_for_flow(root.pid)?;
    assert_flow(&ev, echo.addr(), "deny", "default-deny", "enforce");
    assert_eq!(
        (ev["uid"].as_u64(), ev["gid"].as_u64()),
        (Some(0), Some(0)),
        "{ev}"
    );
    assert_eq!(ev["comm"], "cp-probe", "{ev}");
    assert_eq!(echo.accepted(), 1);
    Ok(())
}

#[test]
fn fire_and_forget_clients_are_delivered_and_logged() -> Result<()> {
    // `printf 'metric 1\n' | nc -q0 host 2003`: write, close, never read.
    // The client's close() may come before the gateway has accepted the
    // connection; the bytes were allowed and must still arrive.
    const K: u64 = 200;
    const N: u64 = 100;
    let cg = TestCgroup::new("fire-forget")?;
    let sink = Server::sink(v4(18))?;
    let cfg = GatewayConfig::new("fire-forget", &cg)?
        .target(target_for("sink", &[&sink]))
        .rule(Rule::allow("allow-sink", &["sink"]));
    let gw = Gateway::start(&cfg)?;

    let r = ProbeArgs::send_close(sink.addr(), N, K).run(cg.command(PROBE))?;
    assert_eq!((r.successes, r.failures), (K, 0), "{r:?}");
    let outcomes = gw.wait_for_accepted(K as usize, FLOWS_TIMEOUT)?;
    let lost: Vec<&Value> = outcomes
        .iter()
        .filter(|e| chokepoint_tests::message(e) != Some("flow"))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {K} connections were refused for want of a record: {lost:?}",
        lost.len()
    );
    let allowed = outcomes
        .iter()
        .filter(|e| e["fields"]["decision"] == "allow")
        .count();
    assert_eq!(allowed, K as usize);
    let done = sink.wait_finished(K as usize, FLOWS_TIMEOUT)?;
    let short: Vec<_> = done
        .iter()
        .filter(|c| c.bytes_in != N || !c.saw_eof)
        .collect();
    assert!(
        short.is_empty(),
        "{} of {K} connections lost data: {short:?}",
        short.len()
    );
    Ok(())
}

/// A `cp-probe hold` that keeps its connections open until dropped (its
/// stdin closed) and is killed if the test fails first.
struct Holder(Option<std::process::Child>);

impl Holder {
    /// `command` is `hold` or `stall`.
    fn start(cg: &TestCgroup, command: &str, to: SocketAddr, count: u64) -> Result<Self> {
        Self::start_with(cg, &[command], to, count)
    }

    /// `args`: the command and its options before `--to`.
    fn start_with(cg: &TestCgroup, args: &[&str], to: SocketAddr, count: u64) -> Result<Self> {
        use std::io::BufRead;
        let mut child = cg
            .command(PROBE)
            .args(args)
            .args(["--to", &to.to_string(), "--count", &count.to_string()])
            .arg("--until-stdin-closes")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.as_mut().context("probe stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let holder = Holder(Some(child));
        ensure!(line.trim() == "held", "cp-probe hold printed {line:?}");
        Ok(holder)
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    /// Closes its connections and returns its report.
    fn finish(mut self) -> Result<ProbeReport> {
        let mut child = self.0.take().context("finished twice")?;
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("cp-probe hold printed {stdout:?}"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_job_past_its_connection_limit_is_refused_and_other_jobs_are_not() -> Result<()> {
    let guarded = TestCgroup::new("conn-limit")?;
    let (job_a, job_b) = (guarded.child("job-a")?, guarded.child("job-b")?);
    let echo = Server::echo(v4(20))?;
    let cfg = GatewayConfig::new("conn-limit", &guarded)?
        .daemon_setting("max_connections_per_job = 3")
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    // Job A opens five and keeps them: the fourth and fifth are cut
    // before the gateway opens anything for them.
    let a = Holder::start(&job_a, "hold", echo.addr(), 5)?;
    // One warning for the two refusals: a job hammering its limit is
    // logged once every 10 s (the probe counts both below).
    let shed = wait_for("job A's refusals logged", FLOWS_TIMEOUT, || {
        let shed: Vec<Value> = gw
            .events()
            .into_iter()
            .filter(|e| e["fields"]["decision"] == "shed" && e["fields"]["pid"] == a.pid())
            .map(|e| e["fields"].clone())
            .collect();
        (!shed.is_empty()).then_some(shed)
    })?;
    let a_id = job_a.id()?;
    for ev in &shed {
        assert_eq!(
            (&ev["limit"], &ev["open"], &ev["cgroup_id"]),
            (&Value::from(3), &Value::from(3), &Value::from(a_id)),
            "{ev}"
        );
        let message = ev["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("max_connections_per_job"),
            "the refusal names the setting: {message}"
        );
    }
    // Job B is not held to job A's count while A is at its limit.
    let b = ProbeArgs::hold(echo.addr(), 3).run(job_b.command(PROBE))?;
    assert_eq!((b.successes, b.failures), (3, 0), "{b:?}");

    let a_report = a.finish()?;
    assert_eq!(
        (a_report.successes, a_report.failures),
        (3, 2),
        "{a_report:?}"
    );
    assert_eq!(
        echo.accepted(),
        6,
        "the refused connections never reached the destination"
    );
    // A's connections ended with it: its places are free again.
    wait_flows_of(&gw, a_report.pid, 3)?;
    let again = ProbeArgs::hold(echo.addr(), 3).run(job_a.command(PROBE))?;
    assert_eq!((again.successes, again.failures), (3, 0), "{again:?}");
    Ok(())
}

/// A connect whose SYN never leaves (dropped for its source route) keeps
/// its kernel record for as long as the socket is open; enough of them
/// would fill the map every job shares. A job gets RECORDS_PER_JOB (4096);
/// past it, its own connects fail, and a sibling job's do not.
#[test]
fn a_job_cannot_hold_more_than_its_share_of_the_kernel_records() -> Result<()> {
    a_job_holds_its_share_and_no_more("job-share", &["stall"], &["pending"])
}

/// A SYN the gateway's listener drops (it carries a `TCP_MD5SIG` option;
/// no privilege needed) has already moved its record to the flow map,
/// where the gateway never takes it. Such records stay charged to the job
/// and leave with their sockets; before, they sat outside any share for
/// the gateway's 60-s sweep, and one job could fill the map every job
/// needs.
#[test]
fn records_of_handshakes_the_gateway_never_sees_stay_in_the_jobs_share() -> Result<()> {
    a_job_holds_its_share_and_no_more("md5-share", &["stall", "--md5"], &["flows", "handshakes"])
}

/// The same, disconnected while connecting (`shutdown` leaves the socket
/// closed, not connecting): found in review, such records stayed. The
/// disconnected sockets give their ports back, so later ones reuse them
/// and the flow map holds at most the share.
#[test]
fn records_of_handshakes_abandoned_by_shutdown_stay_in_the_jobs_share() -> Result<()> {
    a_job_holds_its_share_and_no_more(
        "md5-shut-share",
        &["stall", "--md5", "--shutdown"],
        &["handshakes"],
    )
}

/// Job A stalls more connects (`stall_args`) than its share, which the
/// status maps `held_in` then hold exactly; job B is not held back; A's
/// records leave with its sockets, well before the gateway's sweep.
fn a_job_holds_its_share_and_no_more(
    hint: &str,
    stall_args: &[&str],
    held_in: &[&str],
) -> Result<()> {
    const SHARE: u64 = 4096;
    const OVER: u64 = 50;
    let guarded = TestCgroup::new(hint)?;
    let (job_a, job_b) = (guarded.child("job-a")?, guarded.child("job-b")?);
    let echo = Server::echo(v4(21))?;
    let cfg = GatewayConfig::new(hint, &guarded)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    let a = Holder::start_with(&job_a, stall_args, echo.addr(), SHARE + OVER)?;
    let status = gw.status()?;
    for map in held_in {
        assert_eq!(
            status["maps"][map].as_u64(),
            Some(SHARE),
            "the job holds exactly its share in {map}: {status}"
        );
    }
    assert!(
        status["maps"]["flows"].as_u64() <= Some(SHARE),
        "the flow map holds more than the job's share: {status}"
    );
    assert_eq!(
        status["counters"]["job_quota"].as_u64(),
        Some(OVER),
        "{status}"
    );
    let b = ProbeArgs::tcp(echo.addr())
        .send(1000)
        .expect_echo()
        .run(job_b.command(PROBE))?;
    assert_passed(&b, 1000);
    // Job A itself gets nothing more while it holds its share.
    let more = ProbeArgs::tcp(echo.addr()).run(job_a.command(PROBE))?;
    assert_eq!(more.errno("connect"), Some(libc::EPERM), "{more:?}");

    let a = a.finish()?;
    assert_eq!((a.successes, a.failures), (SHARE, OVER), "{a:?}");
    assert_eq!(a.errno("connect"), Some(libc::EPERM), "{a:?}");
    assert_eq!(echo.accepted(), 1, "only job B's connection got through");
    // Closed sockets take their records and charges with them, within
    // MAPS_TIMEOUT (30 s), before the sweep's 60-s age; the gateway's
    // next count sweep (every 15 s) forgets the empty count.
    wait_for(
        "job A's records to be released and its count swept",
        MAPS_TIMEOUT,
        || {
            let s = gw.status().ok()?;
            let m = &s["maps"];
            ["pending", "flows", "handshakes", "jobs"]
                .iter()
                .all(|map| m[map] == 0)
                .then_some(())
        },
    )
    .with_context(|| format!("last status: {:?}", gw.status()))?;
    let again = ProbeArgs::tcp(echo.addr())
        .send(1000)
        .expect_echo()
        .run(job_a.command(PROBE))?;
    assert_passed(&again, 1000);
    Ok(())
}

#[test]
fn ten_thousand_connections_leave_the_maps_empty() -> Result<()> {
    const N: u64 = 10_000;
    let cg = TestCgroup::new("loop")?;
    let echo = Server::echo(v4(10))?;
    let cfg = GatewayConfig::new("loop", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;

    let r = ProbeArgs::repeat(echo.addr(), N).run(cg.command(PROBE))?;
    assert_eq!((r.successes, r.failures), (N, 0), "{r:?}");
    let flows = gw.wait_for_flow_events(N as usize, FLOWS_TIMEOUT)?;
    // Exactly one event per connection, each with its own id.
    assert_eq!(flows.len(), N as usize);
    let ids: std::collections::HashSet<u64> = flows
        .iter()
        .filter_map(|e| e["fields"]["flow_id"].as_u64())
        .collect();
    assert_eq!(ids.len(), N as usize, "flow ids are not unique");
    assert!(
        flows
            .iter()
            .all(|e| e["fields"]["pid"] == r.pid && e["fields"]["decision"] == "allow")
    );
    // sock_release runs when the last reference to a socket goes, which for
    // a closed TCP socket can trail close() slightly: poll.
    let st = wait_for("flow maps to drain", MAPS_TIMEOUT, || {
        let st = gw.status().ok()?;
        let m = &st["maps"];
        (m["pending"] == 0 && m["flows"] == 0 && m["handshakes"] == 0).then_some(st)
    })
    .with_context(|| format!("last status: {:?}", gw.status()))?;
    assert!(st["counters"]["redirected"].as_u64() >= Some(N), "{st}");
    assert_eq!(st["counters"]["record_failed"], 0, "{st}");
    Ok(())
}

/// Exempt before: a socket carrying the gateway's `SO_MARK`, which a job
/// with `CAP_NET_RAW` (container root, by default) can set.
#[test]
fn a_job_that_sets_the_gateways_socket_mark_is_still_redirected() -> Result<()> {
    let cg = TestCgroup::new("mark")?;
    let echo = Server::echo(v4(11))?;
    let cfg = GatewayConfig::new("mark", &cg)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start(&cfg)?;
    let exempt = |gw: &Gateway| -> Result<u64> {
        gw.status()?["counters"]["exempt"]
            .as_u64()
            .context("counters.exempt")
    };
    let exempt_before = exempt(&gw)?;

    // The probe runs as root, so setting the mark succeeds.
    let marked = ProbeArgs::mark(EXEMPT_MARK, echo.addr())
        .send(100)
        .expect_echo()
        .run(cg.command(PROBE))?;
    assert_passed(&marked, 100);
    gw.wait_for_flow(marked.pid)?;
    assert!(
        !is_local_addr_of(&marked, echo.peers()[0]),
        "the marked socket reached the server directly: {marked:?}"
    );
    assert_eq!(exempt(&gw)?, exempt_before, "a job's socket was exempt");
    Ok(())
}

/// The systemd service guards the cgroup2 root and lives below it: the
/// gateway's own upstream sockets pass the programs by its cgroup, while a
/// job beside it is redirected, mark or not.
#[test]
fn the_gateway_inside_the_guarded_tree_is_exempt_by_its_cgroup() -> Result<()> {
    let tree = TestCgroup::new("tree")?;
    let home = tree.child("gateway")?;
    let job = tree.child("job")?;
    let echo = Server::echo(v4(12))?;
    let cfg = GatewayConfig::new("tree", &tree)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let gw = Gateway::start_in(&cfg, &home)?;

    let plain = tcp_echo(echo.addr(), 1000).run(job.command(PROBE))?;
    assert_passed(&plain, 1000);
    gw.wait_for_flow(plain.pid)?;
    let marked = ProbeArgs::mark(EXEMPT_MARK, echo.addr())
        .send(100)
        .expect_echo()
        .run(job.command(PROBE))?;
    assert_passed(&marked, 100);
    gw.wait_for_flow(marked.pid)?;
    for r in [&plain, &marked] {
        assert!(
            echo.peers().iter().all(|p| !is_local_addr_of(r, *p)),
            "a job's socket reached the server directly: {r:?}"
        );
    }
    let st = gw.status()?;
    assert!(
        st["counters"]["exempt"].as_u64() >= Some(2),
        "the gateway's upstream connects were not exempt: {st}"
    );
    drop(gw);
    Ok(())
}

/// systemd gives a restarted service a new cgroup, and the new daemon
/// binds its ports while the programs of the first run are still attached:
/// it must name its cgroup to them first, or they refuse its binds and the
/// host stays without a gateway.
#[test]
fn a_gateway_restarted_in_a_new_cgroup_takes_over() -> Result<()> {
    let tree = TestCgroup::new("moved")?;
    let (first, second) = (tree.child("first")?, tree.child("second")?);
    let job = tree.child("job")?;
    let echo = Server::echo(v4(13))?;
    let cfg = GatewayConfig::new("moved", &tree)?
        .target(target_for("echo", &[&echo]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let mut gw = Gateway::start_in(&cfg, &first)?;
    let before = tcp_echo(echo.addr(), 100).run(job.command(PROBE))?;
    assert_passed(&before, 100);

    gw.restart_in(&second)?;
    let after = tcp_echo(echo.addr(), 100).run(job.command(PROBE))?;
    assert_passed(&after, 100);
    gw.wait_for_flow(after.pid)?;
    drop(gw);
    Ok(())
}

/// Below the guarded cgroup, the gateway's cgroup must be its own: every
/// process there passes the guard as the gateway does.
#[test]
fn the_gateway_refuses_a_cgroup_it_would_share_inside_the_guarded_tree() -> Result<()> {
    let tree = TestCgroup::new("shared")?;
    let home = tree.child("gateway")?;
    let mut neighbour = home.command("sleep").arg("60").spawn()?;
    let cfg = GatewayConfig::new("shared", &tree)?;
    let started = Gateway::start_in(&cfg, &home);
    let _ = neighbour.kill();
    let _ = neighbour.wait();
    assert_refused_start(
        started,
        &format!("also holds other processes ({})", neighbour.id()),
    );
    Ok(())
}

#[test]
fn the_gateway_refuses_to_guard_the_cgroup_it_runs_in() -> Result<()> {
    let cg = TestCgroup::new("self")?;
    let cfg = GatewayConfig::new("self", &cg)?;
    assert_refused_start(
        Gateway::start_in(&cfg, &cg),
        "the gateway runs in the cgroup it guards",
    );
    Ok(())
}

/// The daemon exited before it was ready, saying `why`.
fn assert_refused_start(started: Result<Gateway>, why: &str) {
    match started {
        Ok(_) => panic!("the gateway started; expected it to refuse: {why}"),
        Err(e) => assert!(format!("{e:#}").contains(why), "{e:#}"),
    }
}

/// Accepted connections pass no connect or send hook: only the egress
/// program stands between a job's listener and a client beyond loopback,
/// with `[guard] loopback_clients_only`; without it (the default, so that
/// guarding the cgroup2 root leaves the host's own servers reachable) the
/// outside client is served. The namespace is the test's own (the host's
/// network is never touched); its clients run outside the guarded cgroup.
#[test]
fn loopback_clients_only_keeps_clients_beyond_loopback_from_a_jobs_server() -> Result<()> {
    let ns = TestNetns::new("inbound")?;
    for (n, only_loopback) in [true, false].into_iter().enumerate() {
        let cg = TestCgroup::new("inbound")?;
        let mut cfg = GatewayConfig::new("inbound", &cg)?;
        if only_loopback {
            cfg = cfg.guard_setting("loopback_clients_only = true");
        }
        let _gw = Gateway::start(&cfg)?;
        for (i, (ip, served)) in [(Ipv4Addr::LOCALHOST, true), (TEST_NET_ADDR, !only_loopback)]
            .into_iter()
            .enumerate()
        {
            let port = 4100 + (2 * n + i) as u16;
            let server = {
                let cmd = ns.command_in(&cg, PROBE);
                let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                std::thread::spawn(move || {
                    ProbeArgs::serve(bind, Duration::from_secs(5), 100).run(cmd)
                })
            };
            // Refused until the server listens; a dropped SYN-ACK times out.
            let to = SocketAddr::from((ip, port));
            let client = wait_for(
                "the job's server to listen",
                Duration::from_secs(10),
                || {
                    let r = ProbeArgs::tcp(to)
                        .half_close()
                        .connect_timeout(Duration::from_secs(2))
                        .run(ns.command(PROBE))
                        .ok()?;
                    (r.errno("connect") != Some(libc::ECONNREFUSED)).then_some(r)
                },
            )?;
            let server = server.join().expect("server thread")?;
            if served {
                assert!(server.ok && client.connected, "{to}: {server:?} {client:?}");
                assert_eq!(client.received, 100, "{to}: {client:?}");
            } else {
                assert!(
                    !client.connected && !server.connected,
                    "a client beyond loopback reached the job: {server:?} {client:?}"
                );
            }
        }
    }
    Ok(())
}

/// With `loopback_clients_only`, a gateway running inside the tree it
/// guards must still reach upstreams beyond loopback: its sockets are
/// told apart by their cgroup. The whole test lives in a network namespace
/// of its own, where the upstream is 192.0.2.1; the gateway enters it
/// with `nsenter` (which leaves bpffs and the cgroup2 mount in view).
#[test]
fn a_gateway_inside_the_tree_reaches_upstreams_beyond_loopback() -> Result<()> {
    let ns = TestNetns::new("upstream")?;
    let tree = TestCgroup::new("upstream")?;
    let (home, job) = (tree.child("gateway")?, tree.child("job")?);
    let port = 4200;
    let upstream = SocketAddr::from((TEST_NET_ADDR, port));
    let cfg = GatewayConfig::new("upstream", &tree)?
        .guard_setting("loopback_clients_only = true")
        .target(Target::new("far", &["192.0.2.1"], &[port]))
        .rule(Rule::allow("allow-far", &["far"]));
    let gw = Gateway::start_under(&cfg, &home, ns.nsenter())?;

    let server = {
        let cmd = ns.command(PROBE);
        std::thread::spawn(move || {
            ProbeArgs::serve(upstream, Duration::from_secs(10), 100).run(cmd)
        })
    };
    // Until the server listens the gateway's upstream connect is refused
    // and the job gets an empty stream.
    let client = wait_for("the upstream to answer", Duration::from_secs(10), || {
        let r = ProbeArgs::tcp(upstream)
            .half_close()
            .connect_timeout(Duration::from_secs(5))
            .run(ns.command_in(&job, PROBE))
            .ok()?;
        (r.received > 0).then_some(r)
    })?;
    let server = server.join().expect("server thread")?;
    assert!(server.ok, "{server:?}");
    assert_eq!(client.received, 100, "{client:?}");
    let flow = gw.wait_for_flow(client.pid)?;
    assert_eq!(flow["decision"], "allow", "{flow}");
    drop(gw);
    Ok(())
}

/// A port the kernel may pick for a job's `bind(0)` could be the job's
/// while the gateway is down: the daemon refuses to use one.
#[test]
fn a_gateway_port_in_the_automatic_port_range_is_refused() -> Result<()> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?;
    let mut bounds = range.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
        anyhow::bail!("ip_local_port_range holds {range:?}");
    };
    // A port of the range this host does not reserve ("8080,9000-9100").
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")?;
    let is_reserved = |port: u16| {
        reserved
            .trim()
            .split(',')
            .any(|item| match item.split_once('-') {
                Some((a, b)) => {
                    a.parse().is_ok_and(|a: u16| a <= port)
                        && b.parse().is_ok_and(|b: u16| port <= b)
                }
                None => item.parse() == Ok(port),
            })
    };
    let port = (low..=high)
        .find(|p| !is_reserved(*p))
        .context("this host reserves its whole automatic port range")?;
    let cg = TestCgroup::new("automatic")?;
    let mut cfg = GatewayConfig::new("automatic", &cg)?;
    cfg.udp_port = port;
    assert_refused_start(
        Gateway::start(&cfg),
        &format!("udp_port {port} in the kernel's automatic port range"),
    );
    Ok(())
}

#[test]
fn binding_the_gateway_port_from_the_cgroup_is_refused() -> Result<()> {
    let cg = TestCgroup::new("bind")?;
    let cfg = GatewayConfig::new("bind", &cg)?;
    let gw = Gateway::start(&cfg)?;
    let port = gw.listen_port();

    // 127.0.0.12:<port> is free (the gateway holds only 127.0.0.1 and ::1),
    // as binding it here from outside shows; inside, the guard refuses it.
    drop(TcpListener::bind((v4(12), port)).context("control bind outside the cgroup")?);
    for addr in [
        SocketAddr::new(v4(1), port),
        SocketAddr::new(v4(12), port),
        SocketAddr::new(v6_loopback(), port),
    ] {
        let r = ProbeArgs::bind(addr).run(cg.command(PROBE))?;
        assert_eq!(r.errno("bind"), Some(libc::EPERM), "bind {addr}: {r:?}");
    }
    // Control: other ports bind fine from inside.
    let r = ProbeArgs::bind(SocketAddr::new(v4(12), 0)).run(cg.command(PROBE))?;
    assert!(r.ok, "bind of port 0 inside the cgroup: {r:?}");
    Ok(())
}

#[test]
fn audit_mode_forwards_denied_connections_and_logs_them() -> Result<()> {
    let cg = TestCgroup::new("audit")?;
    let echo = Server::echo(v4(13))?;
    let cfg = GatewayConfig::new("audit", &cg)?.mode(Mode::Audit);
    let gw = Gateway::start(&cfg)?;

    let r = tcp_echo(echo.addr(), 1000).run(cg.command(PROBE))?;
    assert_passed(&r, 1000);
    assert_flow(
        &gw.wait_for_flow(r.pid)?,
        echo.addr(),
        "deny",
        "default-deny",
        "audit",
    );
    assert_eq!(echo.accepted(), 1);
    Ok(())
}

/// Saving a policy file reloads it without a signal, once the file has
/// settled (the daemon looks every 2 s).
#[test]
fn a_saved_policy_file_is_reloaded_without_a_signal() -> Result<()> {
    let cg = TestCgroup::new("watch")?;
    let echo = Server::echo(v4(19))?;
    let base = GatewayConfig::new("watch", &cg)?.target(target_for("echo", &[&echo]));
    let gw = Gateway::start(&base.clone().rule(Rule::deny("block-echo", &["echo"])))?;
    let reloads = || {
        gw.events()
            .iter()
            .filter(|e| chokepoint_tests::message(e) == Some("policy reloaded"))
            .count()
    };
    assert_eq!(reloads(), 0);
    gw.write_config(&base.rule(Rule::allow("allow-echo", &["echo"])).to_toml())?;
    wait_for(
        "the saved file to be reloaded",
        Duration::from_secs(30),
        || (reloads() == 1).then_some(()),
    )
    .with_context(|| format!("daemon log:\n{}", gw.logs().join("\n")))?;
    assert_echo_allowed(&cg, &gw, &echo, "allow-echo")?;
    // Once: an unchanged file is not reloaded again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(reloads(), 1);
    Ok(())
}

#[test]
fn sighup_applies_a_valid_policy_and_keeps_the_old_one_on_errors() -> Result<()> {
    let cg = TestCgroup::new("reload")?;
    let echo = Server::echo(v4(14))?;
    let base = GatewayConfig::new("reload", &cg)?.target(target_for("echo", &[&echo]));
    let mut gw = Gateway::start(&base.clone().rule(Rule::deny("block-echo", &["echo"])))?;

    let r = tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?;
    let ev = gw.wait_for_flow(r.pid)?;
    // No rule allows it at all, so the kernel refuses it at connect().
    assert_refused_at_connect(&r, &ev);
    assert_flow(&ev, echo.addr(), "deny", "block-echo", "enforce");

    gw.write_config(
        &base
            .clone()
            .rule(Rule::allow("allow-echo", &["echo"]))
            .to_toml(),
    )?;
    let outcome = gw.reload()?;
    assert_eq!(
        chokepoint_tests::message(&outcome),
        Some("policy reloaded"),
        "{outcome}"
    );
    assert_echo_allowed(&cg, &gw, &echo, "allow-echo")?;

    let invalid = base
        .clone()
        .rule(Rule::deny("block-echo", &["echo"]))
        .to_toml()
        .replace("action = \"deny\"", "action = \"sometimes\"");
    gw.write_config(&invalid)?;
    let outcome = gw.reload()?;
    let msg = chokepoint_tests::message(&outcome).unwrap_or_default();
    assert!(msg.starts_with("policy reload failed"), "{outcome}");
    assert_echo_allowed(&cg, &gw, &echo, "allow-echo")?;
    assert!(gw.is_running(), "an invalid reload stopped the daemon");

    // Back to denying: the kernel forgets the destination again.
    gw.write_config(&base.rule(Rule::deny("block-echo", &["echo"])).to_toml())?;
    let outcome = gw.reload()?;
    assert_eq!(
        chokepoint_tests::message(&outcome),
        Some("policy reloaded"),
        "{outcome}"
    );
    let r = tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?;
    let ev = gw.wait_for_flow(r.pid)?;
    assert_refused_at_connect(&r, &ev);
    assert_flow(&ev, echo.addr(), "deny", "block-echo", "enforce");
    assert_eq!(
        echo.accepted(),
        2,
        "only the two allowed connections reached the server"
    );
    let exit = gw.terminate()?.context("daemon was running")?;
    assert!(
        exit.success(),
        "SIGTERM should end the daemon cleanly, got {exit}"
    );
    // A clean stop still leaves the host closed, and the kernel keeps
    // refusing outright what the last policy denies.
    let r = tcp_echo(echo.addr(), 100).run(cg.command(PROBE))?;
    assert_eq!(
        r.errno("connect"),
        Some(libc::EPERM),
        "after SIGTERM: {r:?}"
    );
    assert_eq!(gw.status()?["attached"], true, "SIGTERM must not detach");
    Ok(())
}

#[test]
fn sighup_right_after_ready_reloads_instead_of_killing() -> Result<()> {
    // READY=1 promises the daemon is fully up, signal handling included:
    // systemd may send `reload` the moment it has it.
    let cg = TestCgroup::new("early-hup")?;
    let mut gw = Gateway::start(&GatewayConfig::new("early-hup", &cg)?)?;
    let outcome = gw.reload()?;
    assert_eq!(
        chokepoint_tests::message(&outcome),
        Some("policy reloaded"),
        "{outcome}"
    );
    assert!(gw.is_running());
    Ok(())
}

/// Runs `chokepoint run` expecting it to refuse to start.
fn run_expecting_failure(
    config_text: &str,
    instance: &str,
) -> Result<(std::process::Output, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("chokepoint.toml");
    std::fs::write(&path, config_text)?;
    let bin = chokepoint_tests::chokepoint_bin()?;
    let out = run_with_timeout(
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--log-format", "text"]),
        Duration::from_secs(60),
    );
    // Looked at before the cleanup below, which would remove them.
    let pins_left = pin_dir(instance).exists();
    // Whatever happened, leave nothing attached.
    let _ = cli(&["detach", "--instance", instance]);
    let out = out?;
    ensure!(
        !out.status.success(),
        "chokepoint run unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !pins_left,
        "a failed start left pins behind in {}: {}",
        pin_dir(instance).display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out, dir))
}

/// Whether `text` has `<path>:<line>:<col>` with `line` as given.
fn has_location(text: &str, path: &Path, line: usize) -> bool {
    let prefix = format!("{}:{line}:", path.display());
    text.match_indices(&prefix).any(|(i, _)| {
        let rest = &text[i + prefix.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(':')
    })
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn run_with_invalid_policy_exits_with_location_and_leaves_no_pins() -> Result<()> {
    let cg = TestCgroup::new("bad-policy")?;
    let cfg = GatewayConfig::new("bad-policy", &cg)?
        .target(Target::new("echo", &["127.0.0.15"], &[7000]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let text = cfg
        .to_toml()
        .replace("action = \"allow\"", "action = \"sometimes\"");
    let (out, dir) = run_expecting_failure(&text, &cfg.instance)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = dir.path().join("chokepoint.toml");
    assert!(
        has_location(&stderr, &path, line_of(&text, "sometimes")),
        "no file:line:col in: {stderr}"
    );
    Ok(())
}

#[test]
fn run_with_missing_cgroup_names_the_path() -> Result<()> {
    let cg = TestCgroup::new("no-cgroup")?;
    let mut cfg = GatewayConfig::new("no-cgroup", &cg)?;
    cfg.cgroup = cgroup2_mount()?.join(format!("cp-test-absent-{}", std::process::id()));
    let (out, dir) = run_expecting_failure(&cfg.to_toml(), &cfg.instance)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&*cfg.cgroup.to_string_lossy()),
        "path not named in: {stderr}"
    );
    assert!(
        !cfg.cgroup.exists(),
        "chokepoint created the missing cgroup without `create = true`"
    );
    // The file is what needs fixing, and nothing was made before the
    // refusal: no host key, no ledger.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        !dir.path().join("keys").exists(),
        "a refused start made the recorder's keys"
    );
    Ok(())
}

#[test]
fn run_with_busy_listen_port_says_so_and_leaves_no_pins() -> Result<()> {
    let cg = TestCgroup::new("busy-port")?;
    let cfg = GatewayConfig::new("busy-port", &cg)?;
    let _holder = TcpListener::bind((v4(1), cfg.listen_port))?;
    let (out, _dir) = run_expecting_failure(&cfg.to_toml(), &cfg.instance)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&cfg.listen_port.to_string()),
        "port not named in: {stderr}"
    );
    assert_eq!(status_detached(&cfg.instance)?["attached"], false);
    Ok(())
}

#[test]
fn policy_check_exits_2_with_locations_on_errors_and_0_when_valid() -> Result<()> {
    let cg = TestCgroup::new("check")?;
    let cfg = GatewayConfig::new("check", &cg)?
        .target(Target::new("echo", &["127.0.0.16"], &[7000]))
        .rule(Rule::allow("allow-echo", &["echo"]));
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, cfg.to_toml())?;
    let out = cli(&["policy", "check", &good.to_string_lossy()])?;
    assert!(
        out.status.success(),
        "valid file rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = cfg
        .to_toml()
        .replace("action = \"allow\"", "action = \"sometimes\"");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, &text)?;
    // Files given together form one policy, so the bad one is checked alone.
    let out = cli(&["policy", "check", &bad.to_string_lossy()])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status of policy check on a bad file"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        has_location(&all, &bad, line_of(&text, "sometimes")),
        "no file:line:col in: {all}"
    );
    Ok(())
}
