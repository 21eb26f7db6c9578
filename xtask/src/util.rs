//! Running external commands: each one is printed before it runs, and a failure names the command and what to do next.

use std::{
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context, Result, bail};

/// A command that ran and exited unsuccessfully. `main` exits with the same
/// code, so `cargo xtask test` fails the way `cargo test` did.
#[derive(Debug)]
pub struct Failed {
    pub command: String,
    pub status: ExitStatus,
    pub hint: String,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)?;
        if !self.hint.is_empty() {
            write!(f, ": {}", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failed {}

/// The workspace root: xtask lives one level below it, so this holds wherever cargo was run from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Says what xtask is doing, set apart from the output of the commands it runs.
pub fn say(msg: impl fmt::Display) {
    eprintln!("xtask: {msg}");
}

/// Shell-like rendering of a command (env overrides, program, args), for printing and error messages.
pub fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+%^".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn announce(cmd: &Command) {
    match cmd.get_current_dir() {
        Some(dir) => eprintln!("$ (cd {} && {})", dir.display(), show(cmd)),
        None => eprintln!("$ {}", show(cmd)),
    }
}

fn spawn_error(cmd: &Command, err: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(err).context(format!(
        "could not start `{}` (is {} installed and on PATH?)",
        show(cmd),
        cmd.get_program().to_string_lossy()
    ))
}

/// Runs `cmd` with inherited stdio; a non-zero exit becomes [`Failed`] carrying `hint`.
pub fn run(cmd: &mut Command, hint: &str) -> Result<()> {
    announce(cmd);
    let status = cmd.status().map_err(|e| spawn_error(cmd, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failed {
            command: show(cmd),
            status,
            hint: hint.to_owned(),
        }
        .into())
    }
}

/// Runs `cmd` capturing stdout (stderr passes through), returning its output whatever the exit status.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    announce(cmd);
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    cmd.output().map_err(|e| spawn_error(cmd, e))
}

/// Runs `cmd` capturing stdout, requiring success, and returns stdout as text.
pub fn stdout(cmd: &mut Command, hint: &str) -> Result<String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        return Err(Failed {
            command: show(cmd),
            status: out.status,
            hint: hint.to_owned(),
        }
        .into());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", show(cmd)))
}

/// Whether `cmd` starts and exits 0, with all its output discarded: for "is it already there?" probes,
/// where a missing program is an answer, not an error.
pub fn probe(cmd: &mut Command) -> bool {
    announce(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Refuses `task` unless running as root (effective uid 0), saying why it needs root.
pub fn require_root(task: &str, why: &str) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("`cargo xtask {task}` must run as root: {why} (try: sudo -E cargo xtask {task})");
    }
    Ok(())
}

/// A `cargo` command run from the workspace root, so `-p` and relative paths mean the same from any directory.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_only_what_a_shell_would_need() {
        let mut cmd = Command::new("cargo");
        cmd.env("RUSTFLAGS", "-L /x -l dylib=LLVM-22").args([
            "build",
            "-p",
            "gateway-user",
            "it's",
        ]);
        assert_eq!(
            show(&cmd),
            r"RUSTFLAGS='-L /x -l dylib=LLVM-22' cargo build -p gateway-user 'it'\''s'"
        );
    }

    #[test]
    fn failure_names_the_command_and_the_hint() {
        let err = run(&mut Command::new("false"), "do the thing").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("`false` failed"), "{msg}");
        assert!(msg.ends_with(": do the thing"), "{msg}");
    }

    #[test]
    fn probe_treats_a_missing_program_as_no() {
        assert!(!probe(&mut Command::new(
            "/nonexistent/chokepoint-xtask-probe"
        )));
    }
}
