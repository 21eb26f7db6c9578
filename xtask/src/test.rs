//! `cargo xtask test`: the project's whole test suite, as CI runs it (`.ci/run`).

use std::ffi::OsString;

use anyhow::Result;

use crate::{
    build_cmd::{self, Profile},
    setup,
    util::{self, say},
};

/// Installs what is missing, builds the release binary the integration tests spawn, then runs
/// every test in the workspace; `extra` (after `--`) goes to `cargo test`, e.g. a filter.
pub fn test(extra: &[OsString]) -> Result<()> {
    util::require_root(
        "test",
        "the integration tests create cgroups and attach BPF programs",
    )?;
    setup::setup()?;
    let bin = build_cmd::build(Profile::Release)?;
    let mut cmd = util::cargo();
    cmd.env("CHOKEPOINT_BIN", &bin)
        .env("RUST_BACKTRACE", "1")
        // gateway-ebpf only compiles for the BPF target; its code is exercised through the binary.
        .args([
            "test",
            "--workspace",
            "--exclude",
            "gateway-ebpf",
            "--release",
        ])
        .args(extra);
    util::run(
        &mut cmd,
        "see cargo's output above (a compile error or failing tests); rerun one test with `cargo xtask test -- <name>`",
    )?;
    say("tests passed");
    Ok(())
}
