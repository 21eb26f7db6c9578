//! Files a policy names (passwords, the masking key, CA bundles): where they are and the checks made at load.
use std::{
    fs::{self, File},
    io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::load::Source;

/// A secret file holds one password or key; anything bigger is a mistake
/// (a certificate, a dump), and reading it whole would be unbounded.
pub(super) const SECRET_MAX_BYTES: u64 = crate::regular_file::SECRET_MAX_BYTES;

/// A path as written, relative to the directory of the file that names it
/// (as `include` is), so that loading does not depend on the working
/// directory.
pub(super) fn resolve(sources: &[Source], file: usize, written: &str) -> PathBuf {
    let path = Path::new(written);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    sources
        .get(file)
        .and_then(|s| s.path.parent())
        .unwrap_or(Path::new(""))
        .join(path)
}

/// Checks a file that holds a secret and returns its bytes: it must be a
/// regular file that the gateway can read, owned by root or by the user
/// loading the policy, that nobody but its owner can read or write
/// (mode & 0o077 == 0), and that is not empty. `key` is the TOML key that
/// names it, for the messages.
pub(super) fn read_secret(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let metadata = metadata(path, key, "create it with the secret, then chmod 600 it")?;
    // Any other owner (a CI job's user, say) could read or replace it.
    let owner = metadata.uid();
    let me = nix::unistd::geteuid().as_raw();
    if owner != 0 && owner != me {
        return Err(format!(
            "{key} {shown} is owned by uid {owner}, who could read or replace the secret: run chown root {shown} (or chown it to the gateway's user)"
        ));
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{key} {shown} is readable or writable by group or others (mode {mode:04o}): run chmod 600 {shown}"
        ));
    }
    let bytes = read_bounded(path).map_err(|e| read_error(key, path, &e))?;
    if without_newline(&bytes).is_empty() {
        return Err(format!(
            "{key} {shown} is empty: write the secret into it (one line)"
        ));
    }
    Ok(bytes)
}

/// Checks a file that is not secret (a CA bundle): a regular, readable file.
pub(super) fn check_readable(path: &Path, key: &str) -> Result<(), String> {
    metadata(path, key, "fix the path")?;
    File::open(path)
        .map(drop)
        .map_err(|e| read_error(key, path, &e))
}

fn metadata(path: &Path, key: &str, fix: &str) -> Result<fs::Metadata, String> {
    let shown = path.display();
    let metadata = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("{key} {shown} does not exist: {fix}"),
        _ => read_error(key, path, &e),
    })?;
    if !metadata.is_file() {
        return Err(format!(
            "{key} {shown} is not a regular file: name the file itself"
        ));
    }
    Ok(metadata)
}

fn read_error(key: &str, path: &Path, e: &io::Error) -> String {
    let shown = path.display();
    match e.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "{key} {shown} cannot be read by this process ({e}): check its owner, or run as the gateway's user"
        ),
        io::ErrorKind::FileTooLarge => format!(
            "{key} {shown} is larger than {} KiB: it should hold only the secret",
            SECRET_MAX_BYTES / 1024
        ),
        _ => format!("{key} {shown} cannot be read: {e}"),
    }
}

/// The file's bytes, refusing more than [`SECRET_MAX_BYTES`] and anything
/// but a regular file (a FIFO would block the read for ever).
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    crate::regular_file::read_bounded(path, SECRET_MAX_BYTES)
}

/// Editors and `echo` end a file with a newline that is not part of the
/// password: drop one `\n` (or `\r\n`).
pub(super) fn without_newline(bytes: &[u8]) -> &[u8] {
    match bytes.strip_suffix(b"\n") {
        Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
        None => bytes,
    }
}
