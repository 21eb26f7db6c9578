//! Shared harness of Chokepoint's integration tests: test cgroups, the gateway process, loopback servers, the cp-probe client.
//!
//! Every integration test file under `tests/tests/` builds on these pieces
//! instead of its own: a [`TestCgroup`] to guard, a [`Gateway`] attached to
//! it, [`Server`]s as destinations and [`ProbeArgs`] to act from inside.
pub mod cgroup;
pub mod dns;
pub mod gateway;
pub mod interrupt;
pub mod metrics;
pub mod netns;
pub mod ports;
pub mod postgres;
pub mod probe;
pub mod servers;
pub mod webhook;

use std::{
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
pub use cgroup::{TestCgroup, cgroup2_mount};
pub use dns::DnsServer;
pub use gateway::{
    EXEMPT_MARK, Gateway, GatewayConfig, Mode, Rule, Target, chokepoint_bin,
    chokepoint_bin_for_anyone, cli, message, pin_dir,
};
pub use netns::{TEST_NET_ADDR, TestNetns};
pub use ports::{gateway_port, instance_name};
pub use postgres::{PgServer, job_command, job_psql};
pub use probe::{Failure, ProbeArgs, ProbeReport};
pub use servers::{ConnRecord, Server, UdpSink};
pub use webhook::WebhookReceiver;

/// Polls `check` until it returns `Some`, or fails naming `what` after
/// `timeout`. Timeouts here only stop a broken test from hanging; nothing
/// asserts on how long anything took.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion, capturing stdout and stderr; SIGKILLs it (by
/// its own pid) and fails if it is still running after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!(
                "{:?} (pid {pid}) still running after {timeout:?}; killed",
                cmd.get_program()
            )
        }
    }
}
