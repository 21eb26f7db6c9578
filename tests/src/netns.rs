//! Network namespaces a test creates (`ip netns add`), for addresses that
//! must not be loopback without touching the host's own network.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::TestCgroup;

/// A named network namespace with loopback up and the documentation
/// address `192.0.2.1` (TEST-NET-1, never routed) on it. Removed on drop,
/// also when the test fails.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

/// The non-loopback address every [`TestNetns`] has.
pub const TEST_NET_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);

impl TestNetns {
    pub fn new(hint: &str) -> Result<Self> {
        let name = format!("cp-test-{hint}-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.name, "addr", "add", "192.0.2.1/32", "dev", "lo"])?;
        Ok(ns)
    }

    /// `program` run inside the namespace, in no test cgroup.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        cmd
    }

    /// A command prefix that runs a program in this namespace and changes
    /// nothing else (`ip netns exec` also remounts /sys, which hides bpffs
    /// and the cgroup2 mount from a gateway).
    pub fn nsenter(&self) -> Vec<String> {
        vec![
            "nsenter".to_owned(),
            format!("--net=/run/netns/{}", self.name),
        ]
    }

    /// `program` run inside the namespace and inside `cgroup`.
    pub fn command_in(&self, cgroup: &TestCgroup, program: impl AsRef<Path>) -> Command {
        let mut cmd = cgroup.command("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        cmd
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: removing network namespace {}: {e:#}", self.name);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
