//! DNS mediation end to end: guarded processes resolve through getaddrinfo (glibc, DNS over TCP) in a mount namespace with their own resolv.conf; the gateway answers allowed names from a test server and opens hostname targets only to jobs that resolved them (run as root).
//!
//! The test's authoritative server listens on 127.0.0.97:53 (or .98); the jobs'
//! resolv.conf names 127.0.0.93, where nothing listens: only the gateway
//! can answer there. Targets live on 127.0.0.94 and 127.0.0.95.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Output,
    time::Duration,
};

use anyhow::{Context, Result};
use chokepoint_tests::{
    DnsServer, Gateway, GatewayConfig, Mode, ProbeArgs, Server, TestCgroup, UdpSink,
    run_with_timeout, wait_for,
};

const PROBE: &str = env!("CARGO_BIN_EXE_cp-probe");
const TIMEOUT: Duration = Duration::from_secs(60);

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The policy, with the test's own upstream server.
fn rules(upstream: IpAddr) -> String {
    format!(
        r#"
[dns]
upstream = ["{upstream}:53"]

[[target]]
name = "web"
hosts = ["db.test"]
ports = [8080]

[[target]]
name = "shared-a"
hosts = ["dual.test"]
ports = [8080]

[[target]]
name = "shared-b"
hosts = ["other.test"]
ports = [9090]

[[target]]
name = "time"
hosts = ["time.test"]
ports = [1123]
protocol = "udp"

[[rule]]
name = "jobs"
action = "allow"
targets = ["web", "shared-a", "shared-b", "time"]
"#
    )
}

struct Setup {
    gw: Gateway,
    job_a: TestCgroup,
    job_b: TestCgroup,
    _guarded: TestCgroup,
    upstream: DnsServer,
    resolv: tempfile::TempDir,
}

impl Setup {
    /// `upstream`: the last byte of the test server's 127.0.0.x, one per test.
    fn start(hint: &str, upstream: u8) -> Result<Self> {
        Self::start_with(hint, upstream, Mode::Enforce)
    }

    /// Like [`start`](Self::start), in `mode`.
    fn start_with(hint: &str, upstream: u8, mode: Mode) -> Result<Self> {
        let upstream_ip = v4(upstream);
        let upstream = DnsServer::start(
            upstream_ip,
            &[
                ("db.test", &[v4(94)]),
                ("dual.test", &[v4(95)]),
                ("other.test", &[v4(95)]),
                ("denied.test", &[v4(96)]),
                ("time.test", &[v4(92)]),
            ],
        )?;
        let guarded = TestCgroup::new(hint)?;
        let job_a = guarded.child("job-a")?;
        let job_b = guarded.child("job-b")?;
        let mut config = GatewayConfig::new(hint, &guarded)?
            .mode(mode)
            .raw_toml(&rules(upstream_ip));
        config.daemon.push("udp_idle_timeout = \"1s\"".into());
        let gw = Gateway::start(&config).with_context(|| config.to_toml())?;
        let resolv = tempfile::tempdir()?;
        // use-vc: glibc asks over TCP; the other file, over UDP.
        std::fs::write(
            resolv.path().join("resolv.conf"),
            "nameserver 127.0.0.93\noptions use-vc attempts:1 timeout:5\n",
        )?;
        std::fs::write(
            resolv.path().join("resolv-udp.conf"),
            "nameserver 127.0.0.93\noptions attempts:1 timeout:5\n",
        )?;
        Ok(Self {
            gw,
            job_a,
            job_b,
            _guarded: guarded,
            upstream,
            resolv,
        })
    }

    /// `getent ahostsv4 <name>` in `cgroup`, in a private mount namespace
    /// whose /etc/resolv.conf is the test's.
    fn getent(&self, cgroup: &TestCgroup, name: &str) -> Result<Output> {
        self.getent_with(cgroup, name, "resolv.conf")
    }

    /// Like [`getent`](Self::getent), asking over UDP.
    fn getent_udp(&self, cgroup: &TestCgroup, name: &str) -> Result<Output> {
        self.getent_with(cgroup, name, "resolv-udp.conf")
    }

    fn getent_with(&self, cgroup: &TestCgroup, name: &str, conf: &str) -> Result<Output> {
        let resolv = self.resolv.path().join(conf);
        let mut cmd = cgroup.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/resolv.conf && exec getent ahostsv4 {name}",
                resolv.display()
            ));
        run_with_timeout(&mut cmd, TIMEOUT)
    }

    /// True when an echo exchange with `to` works from `cgroup`.
    fn reaches(&self, cgroup: &TestCgroup, to: SocketAddr) -> Result<bool> {
        let r = ProbeArgs::tcp(to)
            .send(64)
            .expect_echo()
            .run(cgroup.command(PROBE))?;
        Ok(r.echo_ok == Some(true))
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn resolved_names_open_their_targets_for_that_job_only() -> Result<()> {
    let s = Setup::start("dns-resolve", 97)?;
    // The target names port 8080, so the echo server takes it.
    let web_8080 = Server::echo_on(SocketAddr::new(v4(94), 8080))?;
    let web = SocketAddr::new(v4(94), 8080);
    assert!(!s.reaches(&s.job_a, web)?, "nobody resolved db.test yet");

    // A DoT (or DoH) endpoint is a TCP target like any other: no rule
    // names it, so a job cannot take its queries around the forwarder.
    let dot = Server::echo_on(SocketAddr::new(v4(88), 853))?;
    assert!(!s.reaches(&s.job_a, dot.addr())?, "DoT got out");
    assert_eq!(dot.accepted(), 0, "the DoT server was reached");

    let out = s.getent(&s.job_a, "db.test")?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.94"), "{}", text(&out));
    assert!(s.reaches(&s.job_a, web)?, "job-a resolved db.test");
    assert!(!s.reaches(&s.job_b, web)?, "job-b did not");
    assert!(web_8080.accepted() >= 1);

    // A denied name: NXDOMAIN from the gateway, the upstream never asked.
    let out = s.getent(&s.job_a, "denied.test")?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!s.upstream.asked().contains(&"denied.test".to_owned()));
    // An unknown name the policy allows nowhere: also never forwarded.
    let out = s.getent(&s.job_a, "nowhere.test")?;
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(s.upstream.asked(), ["db.test"]);

    let events = wait_for("recorded dns events", TIMEOUT, || {
        let e = s.gw.recorded("dns");
        (e.len() >= 3).then_some(e)
    })?;
    let allowed = events.iter().find(|e| e["name"] == "db.test").unwrap();
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["rule"], "jobs");
    assert_eq!(allowed["answer"], "No Error");
    assert_eq!(allowed["addresses"][0], "127.0.0.94 ttl 300");
    let denied = events.iter().find(|e| e["name"] == "denied.test").unwrap();
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["rule"], "default-deny");
    Ok(())
}

#[test]
fn one_address_behind_two_names_does_not_widen_either() -> Result<()> {
    let s = Setup::start("dns-shared", 98)?;
    let _echo = Server::echo_on(SocketAddr::new(v4(95), 8080))?;
    let dual = SocketAddr::new(v4(95), 8080);
    let out = s.getent(&s.job_a, "dual.test")?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        s.reaches(&s.job_a, dual)?,
        "dual.test names target shared-a"
    );
    // other.test (allowed, for port 9090 only) resolves to the same
    // address: the address is now ambiguous for this job, so neither
    // name's target matches it.
    let out = s.getent(&s.job_a, "other.test")?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !s.reaches(&s.job_a, dual)?,
        "the shared address must not widen"
    );
    // job-b resolved dual.test only: it still may.
    let out = s.getent(&s.job_b, "dual.test")?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(s.reaches(&s.job_b, dual)?);
    Ok(())
}

#[test]
fn udp_queries_are_mediated_and_answers_come_from_the_server_asked() -> Result<()> {
    let s = Setup::start("dns-udp", 99)?;
    let _echo = Server::echo_on(SocketAddr::new(v4(94), 8081))?;
    // glibc asks 127.0.0.93:53 over UDP and only takes an answer from
    // there: the kernel sends the query to the gateway and makes the
    // gateway's answer look like the server's.
    let out = s.getent_udp(&s.job_a, "db.test")?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.94"), "{}", text(&out));
    let out = s.getent_udp(&s.job_a, "denied.test")?;
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(s.upstream.asked(), ["db.test"]);
    // UDP to any other port stays refused.
    let r = ProbeArgs::udp(SocketAddr::new(v4(93), 5353)).run(s.job_a.command(PROBE))?;
    assert!(!r.ok, "UDP to port 5353 got out: {r:?}");
    let events = wait_for("recorded dns events", TIMEOUT, || {
        let e = s.gw.recorded("dns");
        (e.len() >= 2).then_some(e)
    })?;
    assert!(
        events
            .iter()
            .any(|e| e["name"] == "db.test" && e["decision"] == "allow"),
        "{events:?}"
    );
    Ok(())
}

#[test]
fn unconnected_queries_like_musl_are_answered_from_a_server_asked() -> Result<()> {
    let s = Setup::start("dns-musl", 90)?;
    // musl sends each query to every nameserver from one unconnected
    // socket and takes the first answer whose source is one of them.
    let asked = [SocketAddr::new(v4(93), 53), SocketAddr::new(v4(89), 53)];
    let r = ProbeArgs::dns(asked[0], "db.test")
        .and(asked[1])
        .run(s.job_a.command(PROBE))?;
    assert!(r.ok, "{r:?}");
    let (from, answer) = &r.replies[0];
    assert!(
        asked.iter().any(|a| a.to_string() == *from),
        "the answer came from {from}, not a server asked: {r:?}"
    );
    assert_eq!(answer, "No Error 127.0.0.94", "{r:?}");
    let r = ProbeArgs::dns(asked[0], "denied.test").run(s.job_a.command(PROBE))?;
    assert_eq!(r.replies[0].1, "Non-Existent Domain", "{r:?}");
    Ok(())
}

#[test]
fn a_query_is_never_taken_for_another_sockets_on_the_same_port() -> Result<()> {
    let s = Setup::start("dns-same-port", 83)?;
    // Two jobs send from one port number on two local addresses, which the
    // kernel allows. The gateway keeps each sender's record by port, so
    // the later sender's replaces the earlier's before the gateway (paused
    // here) reads the earlier datagram.
    let port = std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 84), 0))?
        .local_addr()?
        .port();
    let from_b = SocketAddr::new(v4(85), port);
    let from_a = SocketAddr::new(v4(84), port);
    let resolver = SocketAddr::new(v4(93), 53);
    let paused = s.gw.pause()?;
    let (b_cmd, a_cmd) = (s.job_b.command(PROBE), s.job_a.command(PROBE));
    let b = std::thread::spawn(move || ProbeArgs::dns(resolver, "db.test").from(from_b).run(b_cmd));
    std::thread::sleep(Duration::from_millis(500));
    let a = std::thread::spawn(move || {
        ProbeArgs::dns(resolver, "other.test")
            .from(from_a)
            .run(a_cmd)
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(paused);
    let a = a.join().expect("probe thread")?;
    let b = b.join().expect("probe thread")?;
    assert_eq!(
        a.replies.first().map(|r| r.1.as_str()),
        Some("No Error 127.0.0.95"),
        "{a:?}"
    );
    // Job b's query would have been answered as job a's (and opened db.test's
    // target to job a): it is dropped instead, and b asks again.
    assert!(
        b.replies.is_empty(),
        "answered under another socket's record: {b:?}"
    );
    let events = wait_for("job a's query recorded", TIMEOUT, || {
        let e = s.gw.recorded("dns");
        (!e.is_empty()).then_some(e)
    })?;
    assert!(
        events.iter().all(|e| e["name"] != "db.test"),
        "job b's query was recorded: {events:?}"
    );
    let b = ProbeArgs::dns(resolver, "db.test")
        .from(from_b)
        .run(s.job_b.command(PROBE))?;
    assert_eq!(
        b.replies.first().map(|r| r.1.as_str()),
        Some("No Error 127.0.0.94"),
        "{b:?}"
    );
    Ok(())
}

#[test]
fn udp_to_a_named_server_passes_only_after_the_job_resolved_it() -> Result<()> {
    let s = Setup::start("dns-ntp", 91)?;
    let time = UdpSink::echo_on(SocketAddr::new(v4(92), 1123))?;
    // Nobody resolved time.test: the kernel lets the datagram reach the
    // relay (a rule names the port), and the gateway refuses it.
    let r = ProbeArgs::udp(time.addr())
        .expect_reply()
        .run(s.job_a.command(PROBE))?;
    assert!(r.replies.is_empty(), "{r:?}");
    let ev = wait_for("the refused flow", TIMEOUT, || {
        s.gw.flows_of(r.pid).into_iter().next()
    })?;
    assert_eq!(
        (&ev["decision"], &ev["rule"], &ev["protocol"]),
        (&"deny".into(), &"default-deny".into(), &"udp".into()),
        "{ev}"
    );

    let out = s.getent_udp(&s.job_a, "time.test")?;
    assert!(out.status.success(), "{}", text(&out));
    let r = ProbeArgs::udp_connect(time.addr())
        .expect_reply()
        .run(s.job_a.command(PROBE))?;
    assert_eq!(
        r.replies,
        [(
            time.addr().to_string(),
            format!("{} cp-probe udp", time.addr())
        )],
        "{r:?}"
    );
    let ev = wait_for("the allowed flow", TIMEOUT, || {
        s.gw.flows_of(r.pid).into_iter().next()
    })?;
    assert_eq!(
        (&ev["decision"], &ev["rule"], &ev["target"]),
        (&"allow".into(), &"jobs".into(), &"time".into()),
        "{ev}"
    );
    // job-b did not resolve it: still refused, and the server only ever
    // heard job-a's allowed datagram.
    let r = ProbeArgs::udp(time.addr())
        .expect_reply()
        .run(s.job_b.command(PROBE))?;
    assert!(r.replies.is_empty(), "{r:?}");
    assert_eq!(time.received().len(), 1, "{:?}", time.received());
    Ok(())
}

#[test]
fn audit_mode_answers_denied_names_and_records_the_would_be_denial() -> Result<()> {
    let s = Setup::start_with("dns-audit", 86, Mode::Audit)?;
    // denied.test is allowed by no rule: in audit mode it is still asked
    // upstream and answered, over TCP and UDP.
    let out = s.getent(&s.job_a, "denied.test")?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.96"), "{}", text(&out));
    let out = s.getent_udp(&s.job_b, "denied.test")?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(s.upstream.asked().contains(&"denied.test".to_owned()));
    let events = wait_for("recorded dns events", TIMEOUT, || {
        let e = s.gw.recorded("dns");
        (e.len() >= 2).then_some(e)
    })?;
    for e in events.iter().filter(|e| e["name"] == "denied.test") {
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["rule"], "default-deny", "{e}");
        assert_eq!(e["answer"], "No Error", "{e}");
        assert_eq!(e["addresses"][0], "127.0.0.96 ttl 300", "{e}");
    }
    Ok(())
}
