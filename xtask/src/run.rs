//! `cargo xtask run`: builds and runs the gateway in the foreground with the example configuration.

use std::{ffi::OsString, os::unix::process::CommandExt, process::Command};

use anyhow::{Result, bail};

use crate::{
    build_cmd::{self, Profile},
    setup,
    util::{self, workspace_root},
};

/// Replaces xtask with `chokepoint run --config examples/chokepoint.toml <extra>`: the daemon then
/// receives Ctrl-C, SIGTERM and SIGHUP itself and its exit status is the task's, with no relay in between.
pub fn run(extra: &[OsString]) -> Result<()> {
    setup::setup()?;
    let bin = build_cmd::build(Profile::Release)?;
    let config = workspace_root().join("examples/chokepoint.toml");
    if !config.is_file() {
        bail!(
            "{} is missing: the example configuration ships with the repository",
            config.display()
        );
    }
    let mut cmd = Command::new(&bin);
    cmd.current_dir(workspace_root())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(extra);
    eprintln!("$ {}", util::show(&cmd));
    // exec only returns on failure.
    let err = cmd.exec();
    bail!("could not exec {}: {err}", bin.display())
}
