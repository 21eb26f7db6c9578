//! `cargo xtask bench`: runs the benchmarks against a freshly built release binary.

use std::ffi::OsString;

use anyhow::Result;
use clap::ValueEnum;

use crate::{
    build_cmd::{self, Profile},
    util,
};

/// A benchmark suite other than the default gateway benchmark.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Suite {
    /// PostgreSQL: pgbench straight to the server vs through PgBouncer (session mode) vs through
    /// the gateway with statement rules, masking and events on (`cp-pgbench`; needs root).
    Postgres,
    /// Session recording: what handing a statement's events to the writer costs the session
    /// (`gateway-user/benches/recording.rs`; no root needed).
    Recording,
    /// Statement classification: parse + classify per cache-miss statement, and a cache hit
    /// (`gateway-user/benches/classify.rs`; no root needed).
    Classify,
    /// Result masking: a masked DataRow against an untouched one
    /// (`gateway-user/benches/masking.rs`; no root needed).
    Masking,
}

/// Builds the binary, then runs the suite's runner from chokepoint-tests against it: `cp-bench`
/// by default, `cp-pgbench` for [`Suite::Postgres`]; `extra` goes to the runner.
pub fn bench(suite: Option<Suite>, extra: &[OsString]) -> Result<()> {
    let runner = match suite {
        Some(suite @ (Suite::Recording | Suite::Classify | Suite::Masking)) => {
            let name = match suite {
                Suite::Recording => "recording",
                Suite::Classify => "classify",
                _ => "masking",
            };
            let mut cmd = util::cargo();
            cmd.args(["bench", "-p", "gateway-user", "--bench", name]);
            return util::run(&mut cmd, &format!("see the {name} benchmark's error above"));
        }
        None => "cp-bench",
        Some(Suite::Postgres) => {
            // Before the build, so a non-root run fails in a second, not after minutes.
            util::require_root(
                "bench postgres",
                "it guards a test cgroup with BPF programs and runs PostgreSQL and PgBouncer as `postgres`",
            )?;
            "cp-pgbench"
        }
    };
    let bin = build_cmd::build(Profile::Release)?;
    let mut cmd = util::cargo();
    cmd.env("CHOKEPOINT_BIN", &bin).args([
        "run",
        "--release",
        "-p",
        "chokepoint-tests",
        "--bin",
        runner,
    ]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    util::run(&mut cmd, &format!("see {runner}'s error above"))
}
