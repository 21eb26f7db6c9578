//! `cargo xtask bench`: runs the benchmarks against a freshly built release binary.

use std::ffi::OsString;

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::{
    build_cmd::{self, Profile},
    util,
};

/// A benchmark suite other than the default gateway benchmark.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Suite {
    /// PostgreSQL through the gateway versus direct (not implemented yet).
    Postgres,
}

/// Builds the binary, then runs `cp-bench` (from chokepoint-tests) against it; `extra` goes to cp-bench.
pub fn bench(suite: Option<Suite>, extra: &[OsString]) -> Result<()> {
    if let Some(Suite::Postgres) = suite {
        // Say so plainly rather than print numbers that measure nothing.
        bail!("postgres benchmark not implemented yet");
    }
    let bin = build_cmd::build(Profile::Release)?;
    let mut cmd = util::cargo();
    cmd.env("CHOKEPOINT_BIN", &bin).args([
        "run",
        "--release",
        "-p",
        "chokepoint-tests",
        "--bin",
        "cp-bench",
    ]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    util::run(&mut cmd, "see cp-bench's error above")
}
