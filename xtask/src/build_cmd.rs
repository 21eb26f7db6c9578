//! `cargo xtask build`: builds the `chokepoint` binary with its eBPF object embedded.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::util::{self, say};

/// Which cargo profile to build; the tests, `run` and `install` use release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    /// The folder cargo puts this profile's outputs in, under the target directory.
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// Builds gateway-user (its build script compiles gateway-ebpf with nightly and embeds it) and
/// returns the absolute path of the `chokepoint` binary.
pub fn build(profile: Profile) -> Result<PathBuf> {
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "gateway-user"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    util::run(
        &mut cmd,
        "fix the compile error above; if bpf-linker, nightly or its rust-src is missing, run `cargo xtask setup`",
    )?;
    let bin = target_dir()?.join(profile.dir()).join("chokepoint");
    if !bin.is_file() {
        anyhow::bail!(
            "cargo built gateway-user but {} is not there: has the binary been renamed in gateway-user/Cargo.toml?",
            bin.display()
        );
    }
    say(format!("built {}", bin.display()));
    Ok(bin)
}

/// The target directory cargo really uses (honours CARGO_TARGET_DIR and config), always absolute.
pub fn target_dir() -> Result<PathBuf> {
    let json = util::stdout(
        util::cargo().args(["metadata", "--format-version", "1", "--no-deps"]),
        "cargo could not read the workspace manifest",
    )?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("`cargo metadata` gave no target_directory")?;
    Ok(PathBuf::from(dir))
}
