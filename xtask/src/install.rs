//! `cargo xtask install`: installs the gateway on this host as a systemd service, keeping an admin's configuration.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    build_cmd::{self, Profile},
    util::{self, say, workspace_root},
};

const BIN: &str = "/usr/local/bin/chokepoint";
const CONFIG_DIR: &str = "/etc/chokepoint";
const CONFIG: &str = "/etc/chokepoint/chokepoint.toml";
const POLICY_DIR: &str = "/etc/chokepoint/policy.d";
const SECRETS_DIR: &str = "/etc/chokepoint/secrets";
const STATE_DIR: &str = "/var/lib/chokepoint";
const UNIT: &str = "/etc/systemd/system/chokepoint.service";

/// Builds, installs binary, directories, default configuration and unit, then starts the service if
/// systemd runs this host.
pub fn install() -> Result<()> {
    util::require_root(
        "install",
        "it writes /usr/local/bin, /etc and /var/lib and manages a systemd service",
    )?;
    let root = workspace_root();
    let example = root.join("examples/chokepoint.toml");
    let unit_src = root.join("systemd/chokepoint.service");
    for src in [&example, &unit_src] {
        if !src.is_file() {
            bail!("{} is missing from the checkout", src.display());
        }
    }
    let bin = build_cmd::build(Profile::Release)?;

    // Copy then rename: overwriting a running executable in place fails with ETXTBSY, and a rename
    // leaves either the old or the new binary, never half of one.
    install_file(&bin, Path::new(BIN), 0o755)?;

    ensure_dir(CONFIG_DIR, 0o755)?;
    ensure_dir(POLICY_DIR, 0o755)?;
    // Upstream credentials: root only.
    ensure_dir(SECRETS_DIR, 0o700)?;
    // Recordings and the host signing key.
    ensure_dir(STATE_DIR, 0o700)?;
    if Path::new(CONFIG).exists() {
        say(format!("kept existing {CONFIG} (never overwritten)"));
    } else {
        install_file(&example, Path::new(CONFIG), 0o644)?;
    }
    install_file(&unit_src, Path::new(UNIT), 0o644)?;

    if Path::new("/run/systemd/system").exists() {
        // `enable --now` does not restart a running service, so a reinstall restarts it explicitly to
        // pick up the new binary (pinned programs keep the host fail-closed in between).
        let was_active =
            util::probe(Command::new("systemctl").args(["is-active", "--quiet", "chokepoint"]));
        util::run(
            Command::new("systemctl").arg("daemon-reload"),
            "see systemd's message above",
        )?;
        util::run(
            Command::new("systemctl").args(["enable", "--now", "chokepoint"]),
            "see `journalctl -u chokepoint` for why the service did not start",
        )?;
        if was_active {
            util::run(
                Command::new("systemctl").args(["restart", "chokepoint"]),
                "see `journalctl -u chokepoint` for why the service did not restart",
            )?;
        }
        say(
            "chokepoint is enabled and running: `systemctl status chokepoint`, `journalctl -u chokepoint -f`",
        );
    } else {
        say(
            "systemd is not running on this host (no /run/systemd/system), so nothing was started.",
        );
        say(format!(
            "start the gateway by hand: {BIN} run --config {CONFIG}"
        ));
        say("or, on a systemd host: systemctl daemon-reload && systemctl enable --now chokepoint");
    }
    Ok(())
}

/// Copies `src` to `dst` with `mode`, through a temporary file renamed over `dst`.
fn install_file(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    let file_name = dst.file_name().context("destination has a file name")?;
    let tmp = dst.with_file_name(format!(".{}.xtask-new", file_name.to_string_lossy()));
    fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", tmp.display()))?;
    fs::rename(&tmp, dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    say(format!(
        "installed {} (mode {mode:o}) from {}",
        dst.display(),
        src.display()
    ));
    Ok(())
}

/// Creates `dir` with `mode`, or tightens an existing one that grants more than `mode`.
fn ensure_dir(dir: &str, mode: u32) -> Result<()> {
    let path = Path::new(dir);
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let current = meta.permissions().mode() & 0o7777;
            if current & !mode != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("chmod {mode:o} {dir}"))?;
                say(format!("tightened {dir} from mode {current:o} to {mode:o}"));
            } else {
                say(format!("kept existing {dir} (mode {current:o})"));
            }
        }
        Ok(_) => bail!("{dir} exists but is not a directory"),
        Err(_) => {
            fs::create_dir_all(path).with_context(|| format!("creating {dir}"))?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {mode:o} {dir}"))?;
            say(format!("created {dir} (mode {mode:o})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-install-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn ensure_dir_creates_then_only_tightens() {
        let root = scratch("dirs");
        let secrets = root.join("secrets");
        let secrets_str = secrets.to_str().unwrap();
        ensure_dir(secrets_str, 0o700).unwrap();
        assert_eq!(mode(&secrets), 0o700);
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(secrets_str, 0o700).unwrap();
        assert_eq!(mode(&secrets), 0o700, "a looser mode is tightened");
        let config = root.join("config");
        fs::create_dir(&config).unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o750)).unwrap();
        ensure_dir(config.to_str().unwrap(), 0o755).unwrap();
        assert_eq!(mode(&config), 0o750, "a stricter admin choice is kept");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn install_file_replaces_with_mode_and_leaves_no_temp_file() {
        let root = scratch("files");
        let (src, dst) = (root.join("src"), root.join("dst"));
        fs::write(&src, "new").unwrap();
        fs::write(&dst, "old").unwrap();
        install_file(&src, &dst, 0o755).unwrap();
        assert_eq!(fs::read_to_string(&dst).unwrap(), "new");
        assert_eq!(mode(&dst), 0o755);
        assert_eq!(fs::read_dir(&root).unwrap().count(), 2);
        fs::remove_dir_all(root).unwrap();
    }
}
